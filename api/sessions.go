package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/store"
)

// This file serves the fallback transports of SPEC §6: GET /v1/sse (an
// SSE stream), POST /v1/sessions (a long-poll session), its polls, the
// frames clients post to either kind, and DELETE of a session. Every
// session runs in the hub as a websocket's does; the frames and their
// handlers are ws.go's.

// Bounds of the fallback transports.
const (
	// DefaultPollWait is the wait of a poll without ?wait=.
	DefaultPollWait = 25 * time.Second
	// MaxPostedFrames bounds the frames of one POST /v1/sessions/{id}/frames.
	MaxPostedFrames = 1000
)

// FramesResponse is the body of a poll and of posted frames' replies.
type FramesResponse struct {
	Frames []json.RawMessage `json:"frames"`
}

// OpenSessionRequest is the optional body of POST /v1/sessions.
type OpenSessionRequest struct {
	// Resume resumes the session of this token instead of opening one.
	Resume string `json:"resume,omitempty"`
}

// streamDeadlines lifts the http.Server's read and write deadlines for a
// request that outlives them (a stream, a poll); the hub bounds each
// write itself.
func streamDeadlines(c echo.Context) {
	rc := http.NewResponseController(c.Response())
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
}

// serveSSE serves GET /v1/sse: a session whose server frames are SSE
// events, until the client goes or the server closes it.
func (s *Server) serveSSE(c echo.Context) error {
	streamDeadlines(c)
	err := s.hub.ServeSSE(c.Response(), c.Request(), s.sessionParams(c, c.QueryParam("resume")))
	if errors.Is(err, hub.ErrStopped) {
		return echo.NewHTTPError(http.StatusServiceUnavailable)
	}
	return sessionError(err)
}

// openSession serves POST /v1/sessions: a long-poll session, answered 201
// with its welcome frame (resumed, with {"resume": token}).
func (s *Server) openSession(c echo.Context) error {
	var req OpenSessionRequest
	if err := decodeBody(c, s.maxBody, &req, true); err != nil {
		return err
	}
	first := &firstFrame{}
	if _, err := s.hub.OpenPoll(c.Request().Context(), s.sessionParams(c, req.Resume), first); err != nil {
		if errors.Is(err, hub.ErrStopped) {
			return echo.NewHTTPError(http.StatusServiceUnavailable)
		}
		return sessionError(err)
	}
	return c.JSONBlob(http.StatusCreated, first.frame)
}

// firstFrame keeps the reply of a long-poll session's opening.
type firstFrame struct{ frame json.RawMessage }

func (f *firstFrame) InBody() bool { return true }
func (f *firstFrame) Send(frame any) bool {
	b, err := json.Marshal(frame)
	if err != nil || f.frame != nil {
		return false
	}
	f.frame = b
	return true
}

// pollFrames serves GET /v1/sessions/{id}/frames?wait=: the frames pushed
// to a long-poll session since its last poll.
func (s *Server) pollFrames(c echo.Context) error {
	wait := DefaultPollWait
	if v := c.QueryParam("wait"); v != "" {
		d, err := parseWait(v)
		if err != nil {
			return err
		}
		wait = d
	}
	streamDeadlines(c)
	frames, err := s.hub.Poll(c.Request().Context(), callerKey(c).Tenant, c.Param("id"), wait)
	if err != nil {
		return sessionError(err)
	}
	if frames == nil {
		frames = []json.RawMessage{}
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, FramesResponse{Frames: frames})
}

// parseWait reads ?wait=: a Go duration ("25s") or whole seconds ("25"),
// 0 to 60 s.
func parseWait(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, errorf(CodeInvalidRequest, "wait must be a duration such as 25s, got %q", shorten(v, 64))
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > hub.MaxPollWait {
		return 0, errorf(CodeInvalidRequest, "wait must be between 0s and %s, got %q", hub.MaxPollWait, shorten(v, 64))
	}
	return d, nil
}

// postFrames serves POST /v1/sessions/{id}/frames: client frames (one, or
// an array), handled in order; the replies, one per frame, in order.
func (s *Server) postFrames(c echo.Context) error {
	var body json.RawMessage
	if err := decodeBody(c, s.maxBody, &body, false); err != nil {
		return err
	}
	var frames []json.RawMessage
	switch b := bytes.TrimSpace(body); {
	case len(b) > 0 && b[0] == '{':
		frames = []json.RawMessage{b}
	case len(b) > 0 && b[0] == '[':
		if err := json.Unmarshal(b, &frames); err != nil {
			return jsonError(err)
		}
	default:
		return errorf(CodeInvalidJSON, "send a frame (a JSON object) or an array of frames")
	}
	if len(frames) == 0 || len(frames) > MaxPostedFrames {
		return errorf(CodeInvalidRequest, "send 1 to %d frames, got %d", MaxPostedFrames, len(frames))
	}
	streamDeadlines(c)
	replies, err := s.hub.Post(c.Request().Context(), callerKey(c).Tenant, c.Param("id"), frames)
	if err != nil {
		return sessionError(err)
	}
	for i, r := range replies {
		if r == nil {
			replies[i] = unanswered(frames[i])
		}
	}
	return c.JSON(http.StatusOK, FramesResponse{Frames: replies})
}

// unanswered is the reply to a posted frame the session did not answer:
// its connection ended (or the request did) first.
func unanswered(frame json.RawMessage) json.RawMessage {
	var head struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(frame, &head)
	b, _ := json.Marshal(WsFrame{Type: "error", ID: head.ID, Code: CodeSessionClosed,
		Message: "the session's connection ended before this frame was answered; it may have taken effect"})
	return b
}

// endSession serves DELETE /v1/sessions/{id}: the client gives its
// session up, as a websocket closed normally does.
func (s *Server) endSession(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
	defer cancel()
	if err := s.hub.End(ctx, callerKey(c).Tenant, c.Param("id")); err != nil {
		return sessionError(err)
	}
	return c.NoContent(http.StatusNoContent)
}

// sessionError names the session in a session_not_found.
func sessionError(err error) error {
	if errors.Is(err, store.ErrSessionNotFound) {
		msg := "session not found: unknown, another tenant's, or not connected (resume it with its token)"
		if errors.Is(err, hub.ErrNotLongPoll) {
			msg = "session not found: it is not a long-poll session"
		}
		return errorf(CodeSessionNotFound, "%s", msg)
	}
	return err
}
