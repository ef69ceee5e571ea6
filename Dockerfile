# syntax=docker/dockerfile:1
# Multi-stage build: a static semaphored binary on distroless, as non-root.

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that source changes reuse this layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w" \
      -o /out/semaphored ./cmd/semaphored

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/semaphored /usr/local/bin/semaphored
USER nonroot:nonroot
EXPOSE 8080
# No HEALTHCHECK: distroless has no shell or curl. Probe GET /healthz
# (liveness) and GET /readyz (readiness) from the orchestrator.
ENTRYPOINT ["/usr/local/bin/semaphored"]
