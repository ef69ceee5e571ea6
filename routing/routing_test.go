package routing

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mustParse(t *testing.T, self, routes, mapping string) Config {
	t.Helper()
	var r, m json.RawMessage
	if routes != "" {
		r = json.RawMessage(routes)
	}
	if mapping != "" {
		m = json.RawMessage(mapping)
	}
	cfg, err := Parse(self, r, m, Options{})
	require.NoError(t, err)
	return cfg
}

func TestParse_Valid(t *testing.T) {
	cfg := mustParse(t, "orders", `[
		{"type":"websocket","channel":"gpu-workers"},
		{"type":"https","url":"https://example.com/hook","timeout":"5s","attempts":2,"releaseOnSuccess":true},
		{"type":"semaphore","target":"overflow","release":true},
		{"type":"https","url":"https://example.org:8443/h?x=1"}
	]`, `{"expr":"{\"payload\": payload}","canOverrideRouting":true}`)
	require.Equal(t, []Route{
		{Type: TypeWebsocket, Channel: "gpu-workers"},
		{Type: TypeHTTPS, URL: "https://example.com/hook", Timeout: 5 * time.Second, Attempts: 2, ReleaseOnSuccess: true},
		{Type: TypeSemaphore, Target: "overflow", Release: true},
		{Type: TypeHTTPS, URL: "https://example.org:8443/h?x=1", Timeout: DefaultTimeout, Attempts: DefaultAttempts},
	}, cfg.Routes)
	require.Equal(t, &Mapping{Expr: `{"payload": payload}`, CanOverrideRouting: true}, cfg.Mapping)

	for _, in := range [][2]string{{"", ""}, {"null", "null"}, {"[]", "null"}, {" null ", " null "}} {
		cfg, err := Parse("s", json.RawMessage(in[0]), json.RawMessage(in[1]), Options{})
		require.NoError(t, err, in)
		require.Empty(t, cfg.Routes)
		require.Nil(t, cfg.Mapping)
	}

	// AllowPrivate admits http:// and private addresses.
	cfg, err := Parse("s", json.RawMessage(`[{"type":"https","url":"http://127.0.0.1:9000/h"}]`), nil, Options{AllowPrivate: true})
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:9000/h", cfg.Routes[0].URL)

	// Null fields count as absent.
	cfg = mustParse(t, "s", `[{"type":"https","url":"https://example.com","timeout":null,"secret":null}]`, "")
	require.Equal(t, DefaultTimeout, cfg.Routes[0].Timeout)
}

func TestParse_Errors(t *testing.T) {
	tests := []struct {
		name, routes, mapping string
		field                 string
		contains              string
	}{
		{"routes not array", `{"type":"websocket"}`, "", "routes", "array"},
		{"route not object", `[1]`, "", "routes[0]", "object"},
		{"missing type", `[{}]`, "", "routes[0].type", "required"},
		{"bad type", `[{"type":"smtp"}]`, "", "routes[0].type", "websocket"},
		{"type not string", `[{"type":1}]`, "", "routes[0].type", "string"},
		{"unknown field", `[{"type":"websocket","chanel":"x"}]`, "", "routes[0].chanel", "unknown"},
		{"field of other type", `[{"type":"websocket","url":"https://x.com"}]`, "", "routes[0].url", "unknown"},
		{"case matters", `[{"type":"https","URL":"https://x.com"}]`, "", "routes[0].URL", "unknown"},
		{"bad channel", `[{"type":"websocket","channel":"-x"}]`, "", "routes[0].channel", "does not match"},
		{"channel type", `[{"type":"websocket","channel":5}]`, "", "routes[0].channel", "string"},
		{"missing url", `[{"type":"websocket"},{"type":"https"}]`, "", "routes[1].url", "required"},
		{"http url", `[{"type":"https","url":"http://example.com"}]`, "", "routes[0].url", "https://"},
		{"ftp url", `[{"type":"https","url":"ftp://example.com"}]`, "", "routes[0].url", "https://"},
		{"relative url", `[{"type":"https","url":"/hook"}]`, "", "routes[0].url", "https://"},
		{"no host", `[{"type":"https","url":"https:///hook"}]`, "", "routes[0].url", "host"},
		{"opaque", `[{"type":"https","url":"https:example.com"}]`, "", "routes[0].url", "host"},
		{"bad url", `[{"type":"https","url":"https://exa mple.com/%zz"}]`, "", "routes[0].url", "valid URL"},
		{"userinfo", `[{"type":"https","url":"https://u:p@example.com"}]`, "", "routes[0].url", "credentials"},
		{"fragment", `[{"type":"https","url":"https://example.com/#x"}]`, "", "routes[0].url", "fragment"},
		{"bad port", `[{"type":"https","url":"https://example.com:99999"}]`, "", "routes[0].url", ""},
		{"loopback ip", `[{"type":"https","url":"https://127.0.0.1/h"}]`, "", "routes[0].url", "private"},
		{"private ip", `[{"type":"https","url":"https://10.1.2.3/h"}]`, "", "routes[0].url", "private"},
		{"metadata ip", `[{"type":"https","url":"https://169.254.169.254/h"}]`, "", "routes[0].url", "private"},
		{"v6 loopback", `[{"type":"https","url":"https://[::1]/h"}]`, "", "routes[0].url", "private"},
		{"mapped v4", `[{"type":"https","url":"https://[::ffff:10.0.0.1]/h"}]`, "", "routes[0].url", "private"},
		{"localhost", `[{"type":"https","url":"https://localhost:8443/h"}]`, "", "routes[0].url", "localhost"},
		{"url too long", `[{"type":"https","url":"https://example.com/` + strings.Repeat("a", MaxURLBytes) + `"}]`, "", "routes[0].url", "at most"},
		{"timeout number", `[{"type":"https","url":"https://example.com","timeout":10}]`, "", "routes[0].timeout", "duration"},
		{"timeout syntax", `[{"type":"https","url":"https://example.com","timeout":"10"}]`, "", "routes[0].timeout", "duration"},
		{"timeout low", `[{"type":"https","url":"https://example.com","timeout":"500ms"}]`, "", "routes[0].timeout", "between"},
		{"timeout high", `[{"type":"https","url":"https://example.com","timeout":"61s"}]`, "", "routes[0].timeout", "between"},
		{"attempts zero", `[{"type":"https","url":"https://example.com","attempts":0}]`, "", "routes[0].attempts", "between"},
		{"attempts high", `[{"type":"https","url":"https://example.com","attempts":11}]`, "", "routes[0].attempts", "between"},
		{"attempts float", `[{"type":"https","url":"https://example.com","attempts":2.5}]`, "", "routes[0].attempts", "integer"},
		{"attempts string", `[{"type":"https","url":"https://example.com","attempts":"3"}]`, "", "routes[0].attempts", "integer"},
		{"releaseOnSuccess type", `[{"type":"https","url":"https://example.com","releaseOnSuccess":"yes"}]`, "", "routes[0].releaseOnSuccess", "boolean"},
		{"secret prefix", `[{"type":"https","url":"https://example.com","secret":"abc"}]`, "", "routes[0].secret", "whsec_"},
		{"secret base64", `[{"type":"https","url":"https://example.com","secret":"whsec_!!"}]`, "", "routes[0].secret", "base64"},
		{"secret short", `[{"type":"https","url":"https://example.com","secret":"whsec_YWJj"}]`, "", "routes[0].secret", "bytes"},
		{"missing target", `[{"type":"semaphore"}]`, "", "routes[0].target", "required"},
		{"bad target", `[{"type":"semaphore","target":"a b"}]`, "", "routes[0].target", "does not match"},
		{"long target", `[{"type":"semaphore","target":"` + strings.Repeat("a", 129) + `"}]`, "", "routes[0].target", "does not match"},
		{"self target", `[{"type":"semaphore","target":"self"}]`, "", "routes[0].target", "itself"},
		{"release type", `[{"type":"semaphore","target":"b","release":1}]`, "", "routes[0].release", "boolean"},
		{"too many routes", "[" + strings.Repeat(`{"type":"websocket"},`, MaxRoutes) + `{"type":"websocket"}]`, "", "routes", "at most"},
		{"mapping not object", "", `"x"`, "mapping", "object"},
		{"mapping invalid JSON", "", `{"expr":`, "mapping", "valid JSON"},
		{"routes invalid JSON", `[{"type":"websocket"}`, "", "routes", "valid JSON"},
		{"mapping no expr", "", `{}`, "mapping.expr", "required"},
		{"mapping empty expr", "", `{"expr":"  "}`, "mapping.expr", "empty"},
		{"mapping expr type", "", `{"expr":1}`, "mapping.expr", "string"},
		{"mapping unknown", "", `{"expr":"{}","canOverride":true}`, "mapping.canOverride", "unknown"},
		{"mapping override type", "", `{"expr":"{}","canOverrideRouting":"true"}`, "mapping.canOverrideRouting", "boolean"},
		{"mapping secret", "", `{"expr":"{}","secret":"nope"}`, "mapping.secret", "whsec_"},
		{"cel syntax", "", `{"expr":"{\"payload\": "}`, "mapping.expr", "Syntax error"},
		{"cel undeclared", "", `{"expr":"{\"payload\": foo}"}`, "mapping.expr", "undeclared reference to 'foo'"},
		{"cel not map", "", `{"expr":"1 + 2"}`, "mapping.expr", "must return a map"},
		{"cel int keys", "", `{"expr":"{1: 2}"}`, "mapping.expr", "must return a map"},
		{"cel too long", "", `{"expr":"` + strings.Repeat(" ", MaxExprBytes) + `{}"}`, "mapping.expr", "at most"},
		{"ok routes then bad mapping", `[{"type":"websocket"}]`, `[]`, "mapping", "object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r, m json.RawMessage
			if tc.routes != "" {
				r = json.RawMessage(tc.routes)
			}
			if tc.mapping != "" {
				m = json.RawMessage(tc.mapping)
			}
			_, err := Parse("self", r, m, Options{})
			require.Error(t, err)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tc.field, fe.Field, fe.Message)
			require.True(t, strings.HasPrefix(fe.Message, tc.field+": "), fe.Message)
			require.Contains(t, fe.Message, tc.contains)
		})
	}
}

func TestParse_SecretGivenIsKept(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))
	cfg := mustParse(t, "s", `[{"type":"https","url":"https://example.com","secret":"`+secret+`"}]`, "")
	require.Equal(t, secret, cfg.Routes[0].Secret)
	require.NoError(t, AssignSecrets(&cfg, Config{}))
	require.Equal(t, secret, cfg.Routes[0].Secret)
}

func TestAssignSecrets(t *testing.T) {
	prev := mustParse(t, "s", `[{"type":"https","url":"https://a.example.com"},{"type":"https","url":"https://b.example.com"}]`, `{"expr":"{}"}`)
	require.NoError(t, AssignSecrets(&prev, Config{}))
	for _, r := range prev.Routes {
		require.True(t, strings.HasPrefix(r.Secret, SecretPrefix), r.Secret)
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.Secret, SecretPrefix))
		require.NoError(t, err)
		require.Len(t, key, SecretBytes)
	}
	require.NotEqual(t, prev.Routes[0].Secret, prev.Routes[1].Secret)
	require.NotEmpty(t, prev.Mapping.Secret)

	next := mustParse(t, "s", `[{"type":"websocket"},{"type":"https","url":"https://b.example.com"},{"type":"https","url":"https://c.example.com"}]`, `{"expr":"{}"}`)
	routesBefore := next.Routes
	require.NoError(t, AssignSecrets(&next, prev))
	require.Empty(t, next.Routes[0].Secret)
	require.Equal(t, prev.Routes[1].Secret, next.Routes[1].Secret, "same URL keeps its secret")
	require.NotEmpty(t, next.Routes[2].Secret)
	require.NotEqual(t, prev.Routes[0].Secret, next.Routes[2].Secret, "a new URL gets a new secret")
	require.NotEqual(t, prev.Routes[1].Secret, next.Routes[2].Secret)
	require.Equal(t, prev.Mapping.Secret, next.Mapping.Secret)
	require.Empty(t, routesBefore[1].Secret, "the parsed slice is not written into")

	// Secrets survive the store round trip.
	extra, err := next.EncodeExtra()
	require.NoError(t, err)
	back, err := DecodeExtra(extra)
	require.NoError(t, err)
	require.Equal(t, next.Routes, back.Routes)
	require.Equal(t, next.Mapping, back.Mapping)
}

func TestExtraRoundTrip(t *testing.T) {
	empty, err := Config{}.EncodeExtra()
	require.NoError(t, err)
	require.Nil(t, empty)
	zero, err := DecodeExtra(nil)
	require.NoError(t, err)
	require.Equal(t, []Route{{Type: TypeWebsocket}}, zero.Chain())

	cfg := mustParse(t, "s", `[{"type":"websocket"},{"type":"https","url":"https://example.com/h"},{"type":"semaphore","target":"b"}]`,
		`{"expr":"{\"payload\": {\"n\": payload.n + 1}}"}`)
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.JSONEq(t, `{"routes":[{"type":"websocket"},
		{"type":"https","url":"https://example.com/h","timeout":"10s","attempts":3,"releaseOnSuccess":false},
		{"type":"semaphore","target":"b","release":false}],
		"mapping":{"expr":"{\"payload\": {\"n\": payload.n + 1}}","canOverrideRouting":false}}`, string(b))
	back, err := DecodeExtra(b)
	require.NoError(t, err)
	require.Equal(t, cfg.Routes, back.Routes)
	res, err := back.Map(context.Background(), MapInput{Payload: json.RawMessage(`{"n":1}`)})
	require.NoError(t, err, "the mapping is recompiled")
	require.JSONEq(t, `{"n":2}`, string(res.Payload))

	// A config stored verbatim by the shape-only validator decodes too.
	old, err := DecodeExtra([]byte(`{"routes":[{"type":"https","url":"https://example.com/h","timeout":"5s"}]}`))
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, old.Routes[0].Timeout)
	// A stored http:// route (saved under --webhook-allow-private) still decodes.
	_, err = DecodeExtra([]byte(`{"routes":[{"type":"https","url":"http://10.0.0.1/h"}]}`))
	require.NoError(t, err)

	_, err = DecodeExtra([]byte(`{"routes":`))
	require.Error(t, err)

	rj, err := cfg.RoutesJSON()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(rj), `[{"type":"websocket"}`))
	mj, err := Config{}.MappingJSON()
	require.NoError(t, err)
	require.Equal(t, "null", string(mj))
}

func chainString(rs []Route) string {
	var s []string
	for _, r := range rs {
		switch r.Type {
		case TypeWebsocket:
			s = append(s, "ws:"+r.Channel)
		case TypeHTTPS:
			s = append(s, "https:"+r.URL)
		case TypeSemaphore:
			s = append(s, "sem:"+r.Target)
		}
	}
	return strings.Join(s, " ")
}

func TestChain(t *testing.T) {
	tests := []struct{ routes, want string }{
		{"", "ws:"},
		{`[]`, "ws:"},
		{`[{"type":"semaphore","target":"b"}]`, "sem:b"},
		{`[{"type":"semaphore","target":"b"},{"type":"https","url":"https://h1.example"},{"type":"websocket","channel":"c1"}]`,
			"ws:c1 https:https://h1.example sem:b"},
		{`[{"type":"semaphore","target":"b"},{"type":"https","url":"https://h1.example"},{"type":"websocket","channel":"c1"},
		   {"type":"semaphore","target":"a"},{"type":"websocket","channel":"c2"},{"type":"https","url":"https://h2.example"}]`,
			"ws:c1 ws:c2 https:https://h1.example https:https://h2.example sem:b sem:a"},
	}
	for _, tc := range tests {
		cfg := mustParse(t, "s", tc.routes, "")
		require.Equal(t, tc.want, chainString(cfg.Chain()), tc.routes)
	}
	// Chain does not reorder the config's own slice.
	cfg := mustParse(t, "s", `[{"type":"semaphore","target":"b"},{"type":"websocket"}]`, "")
	_ = cfg.Chain()
	require.Equal(t, TypeSemaphore, cfg.Routes[0].Type)
}

func TestOverride(t *testing.T) {
	cfg := mustParse(t, "s", `[{"type":"websocket","channel":"c1"},{"type":"https","url":"https://conf.example"},{"type":"semaphore","target":"b"}]`, "")
	chain := cfg.Chain()
	tests := []struct {
		name string
		r    Route
		want string
	}{
		{"SPEC example: https replaces ws and https", Route{Type: TypeHTTPS, URL: "https://ret.example"}, "https:https://ret.example sem:b"},
		{"websocket replaces only websocket", Route{Type: TypeWebsocket, Channel: "c9"}, "ws:c9 https:https://conf.example sem:b"},
		{"semaphore replaces everything", Route{Type: TypeSemaphore, Target: "z"}, "sem:z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, chainString(Override(chain, tc.r)))
		})
	}
	require.Equal(t, "ws:c1 https:https://conf.example sem:b", chainString(chain), "chain not modified")

	// End to end: a mapping's returned route applied to the configured chain.
	for _, tc := range []struct{ route, want string }{
		{`{"type": "https", "url": "https://ret.example"}`, "https:https://ret.example sem:b"},
		{`{"type": "websocket", "channel": "c9"}`, "ws:c9 https:https://conf.example sem:b"},
	} {
		cfg := mustParse(t, "s", `[{"type":"websocket","channel":"c1"},{"type":"https","url":"https://conf.example"},{"type":"semaphore","target":"b"}]`,
			`{"expr":"{\"route\": `+strings.ReplaceAll(tc.route, `"`, `\"`)+`}","canOverrideRouting":true}`)
		res, err := cfg.Map(context.Background(), MapInput{Semaphore: "s"})
		require.NoError(t, err)
		require.NotNil(t, res.Route)
		require.Equal(t, tc.want, chainString(Override(cfg.Chain(), *res.Route)))
	}
	// Default chain (no routes): a returned https route leaves nothing behind it.
	require.Equal(t, "https:https://x.example", chainString(Override(Config{}.Chain(), Route{Type: TypeHTTPS, URL: "https://x.example"})))
	// Several more stable routes stay in their order.
	cfg = mustParse(t, "s", `[{"type":"websocket"},{"type":"semaphore","target":"b"},{"type":"https","url":"https://h1.example"},{"type":"semaphore","target":"a"}]`, "")
	require.Equal(t, "ws:c https:https://h1.example sem:b sem:a", chainString(Override(cfg.Chain(), Route{Type: TypeWebsocket, Channel: "c"})))
}

func TestMap(t *testing.T) {
	ctx := context.Background()
	in := MapInput{Payload: json.RawMessage(`{"n": 41, "price": 2.5, "tags": ["a","b"], "big": 12345678901234567, "user": {"tier": "gold"}}`),
		JobID: "j1", Channel: "eu", Attempt: 2, Semaphore: "orders", MaxValue: 10}

	t.Run("no mapping", func(t *testing.T) {
		res, err := Config{}.Map(ctx, in)
		require.NoError(t, err)
		require.Equal(t, Result{}, res)
	})
	t.Run("payload rewrite", func(t *testing.T) {
		cfg := mustParse(t, "orders", "", `{"expr":"{\"payload\": {\"n\": payload.n + 1, \"p\": payload.price * 2.0, \"tags\": payload.tags.map(t, t.upperAscii()), \"big\": payload.big, \"job\": job.id + \"/\" + job.channel + \"/\" + string(job.attempt), \"sem\": semaphore.name, \"max\": semaphore.maxValue, \"tier\": payload.?user.?tier.orValue(\"none\"), \"b\": b\"hi\", \"nothing\": null}}"}`)
		res, err := cfg.Map(ctx, in)
		require.NoError(t, err)
		require.Nil(t, res.Route)
		require.JSONEq(t, `{"n":42,"p":5,"tags":["A","B"],"big":12345678901234567,"job":"j1/eu/2","sem":"orders","max":10,"tier":"gold","b":"aGk=","nothing":null}`, string(res.Payload))
	})
	t.Run("payload passthrough of every JSON type", func(t *testing.T) {
		cfg := mustParse(t, "orders", "", `{"expr":"{\"payload\": payload}"}`)
		for _, p := range []string{`null`, `true`, `"s"`, `1.5`, `-3`, `[]`, `{}`, `[1,{"a":[null,false,"x",1e300]}]`} {
			res, err := cfg.Map(ctx, MapInput{Payload: json.RawMessage(p)})
			require.NoError(t, err, p)
			require.JSONEq(t, p, string(res.Payload))
		}
		res, err := cfg.Map(ctx, MapInput{})
		require.NoError(t, err)
		require.Equal(t, "null", string(res.Payload), "an empty payload is null")
	})
	t.Run("empty map", func(t *testing.T) {
		cfg := mustParse(t, "orders", "", `{"expr":"{}"}`)
		res, err := cfg.Map(ctx, in)
		require.NoError(t, err)
		require.Equal(t, Result{}, res)
	})
	t.Run("route returned", func(t *testing.T) {
		cfg := mustParse(t, "orders", `[{"type":"https","url":"https://conf.example/h"}]`,
			`{"expr":"payload.user.tier == \"gold\" ? {\"route\": {\"type\": \"https\", \"url\": \"https://gold.example/h\", \"timeout\": \"2s\", \"attempts\": 5}} : {}", "canOverrideRouting": true}`)
		require.NoError(t, AssignSecrets(&cfg, Config{}))
		res, err := cfg.Map(ctx, in)
		require.NoError(t, err)
		require.Nil(t, res.Payload)
		require.Equal(t, &Route{Type: TypeHTTPS, URL: "https://gold.example/h", Timeout: 2 * time.Second, Attempts: 5, Secret: cfg.Mapping.Secret}, res.Route)
	})
	t.Run("route with a configured URL takes its secret", func(t *testing.T) {
		cfg := mustParse(t, "orders", `[{"type":"https","url":"https://conf.example/h"}]`,
			`{"expr":"{\"route\": {\"type\": \"https\", \"url\": \"https://conf.example/h\"}}", "canOverrideRouting": true}`)
		require.NoError(t, AssignSecrets(&cfg, Config{}))
		res, err := cfg.Map(ctx, in)
		require.NoError(t, err)
		require.Equal(t, cfg.Routes[0].Secret, res.Route.Secret)
		require.NotEqual(t, cfg.Mapping.Secret, res.Route.Secret)
	})
	t.Run("route ignored without canOverrideRouting", func(t *testing.T) {
		cfg := mustParse(t, "orders", "", `{"expr":"{\"payload\": 1, \"route\": {\"type\": \"bogus\"}}"}`)
		res, err := cfg.Map(ctx, in)
		require.NoError(t, err)
		require.Nil(t, res.Route)
		require.Equal(t, "1", string(res.Payload))
	})

	mapErrTests := []struct{ name, expr, contains string }{
		{"runtime error: no such key", `{\"payload\": payload.missing}`, "no such key: missing"},
		{"runtime error: division by zero", `{\"payload\": payload.n / 0}`, "division by zero"},
		{"runtime error: overload", `{\"payload\": payload.price + 1}`, "no such overload"},
		{"dyn result not a map", `payload.n`, "must return a map"},
		{"unknown key", `{\"paylod\": 1}`, `unknown key "paylod"`},
		{"invalid route", `{\"route\": {\"type\": \"https\", \"url\": \"http://gold.example\"}}`, "route.url"},
		{"route secret", `{\"route\": {\"type\": \"https\", \"url\": \"https://gold.example\", \"secret\": \"whsec_x\"}}`, "route.secret"},
		{"route to itself", `{\"route\": {\"type\": \"semaphore\", \"target\": semaphore.name}}`, "itself"},
		{"route not an object", `{\"route\": \"https\"}`, "route: must be an object"},
		{"NaN", `{\"payload\": 0.0 / 0.0}`, "not a JSON number"},
		{"non-string key", `{\"payload\": {1: 2}}`, "not a string"},
		{"type value", `{\"payload\": type(1)}`, "no JSON form"},
	}
	for _, tc := range mapErrTests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mustParse(t, "orders", "", `{"expr":"`+tc.expr+`","canOverrideRouting":true}`)
			_, err := cfg.Map(ctx, in)
			var me *MapError
			require.ErrorAs(t, err, &me)
			require.Contains(t, me.Error(), tc.contains)
			require.True(t, strings.HasPrefix(err.Error(), "mapping: "), err.Error())
		})
	}

	t.Run("payload too large", func(t *testing.T) {
		cfg, err := Parse("orders", nil, json.RawMessage(`{"expr":"{\"payload\": payload + payload}"}`), Options{MaxPayloadBytes: 10})
		require.NoError(t, err)
		_, err = cfg.Map(ctx, MapInput{Payload: json.RawMessage(`"0123456789"`)})
		var me *MapError
		require.ErrorAs(t, err, &me)
		require.Contains(t, me.Message, "over the limit")
	})
	t.Run("invalid payload JSON", func(t *testing.T) {
		cfg := mustParse(t, "orders", "", `{"expr":"{}"}`)
		_, err := cfg.Map(ctx, MapInput{Payload: json.RawMessage(`{"a":`)})
		var me *MapError
		require.ErrorAs(t, err, &me)
	})
}

func bigList(n int) json.RawMessage {
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprint(&b, i)
	}
	b.WriteByte(']')
	return json.RawMessage(b.String())
}

func TestMap_CostLimit(t *testing.T) {
	// A generous timeout, so that only the cost limit can stop it.
	cfg, err := Parse("s", nil, json.RawMessage(`{"expr":"{\"payload\": payload.map(x, payload.map(y, x * y)).size()}"}`), Options{MapTimeout: time.Minute})
	require.NoError(t, err)
	// Cheap on a small list...
	res, err := cfg.Map(context.Background(), MapInput{Payload: bigList(10)})
	require.NoError(t, err)
	require.Equal(t, "10", string(res.Payload))
	// ...refused on a large one.
	start := time.Now()
	_, err = cfg.Map(context.Background(), MapInput{Payload: bigList(2000)})
	var me *MapError
	require.ErrorAs(t, err, &me)
	require.Contains(t, me.Message, "cost limit exceeded")
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestMap_Timeout(t *testing.T) {
	// A huge cost limit leaves only the timeout to stop the evaluation.
	cfg, err := Parse("s", nil, json.RawMessage(`{"expr":"{\"payload\": payload.map(x, payload.map(y, payload.map(z, x * y * z))).size()}"}`),
		Options{CostLimit: 1 << 62, MapTimeout: 20 * time.Millisecond})
	require.NoError(t, err)
	_, err = cfg.Map(context.Background(), MapInput{Payload: bigList(3000)})
	var me *MapError
	require.ErrorAs(t, err, &me)
	require.Contains(t, me.Message, "exceeded 20ms")

	// The caller's own cancellation is not the mapping's fault.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = cfg.Map(ctx, MapInput{Payload: bigList(3000)})
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, errors.As(err, &me))
}

func TestCheckCycles(t *testing.T) {
	graph := map[string]string{} // name → routes JSON
	lookup := func(ctx context.Context, name string) (Config, bool, error) {
		rs, ok := graph[name]
		if !ok {
			return Config{}, false, nil
		}
		if rs == "boom" {
			return Config{}, false, errors.New("store down")
		}
		return mustParse(t, name, rs, ""), true, nil
	}
	sem := func(targets ...string) string {
		var parts []string
		for _, tg := range targets {
			parts = append(parts, `{"type":"semaphore","target":"`+tg+`"}`)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	ctx := context.Background()

	graph["B"] = sem("A")
	err := CheckCycles(ctx, "A", mustParse(t, "A", `[{"type":"websocket"},`+sem("B")[1:], ""), lookup)
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	require.ErrorIs(t, err, ErrCycle)
	require.Equal(t, "routes[1].target", fe.Field)
	require.Contains(t, fe.Message, "A → B → A")

	graph["B"] = sem("C")
	graph["C"] = `[{"type":"https","url":"https://example.com"}]`
	require.NoError(t, CheckCycles(ctx, "A", mustParse(t, "A", sem("B"), ""), lookup))

	// Longer cycle through a diamond, and a pre-existing cycle elsewhere that does not pass through A.
	graph["B"] = sem("C", "D")
	graph["C"] = sem("E")
	graph["E"] = sem("C")
	graph["D"] = sem("X", "A")
	err = CheckCycles(ctx, "A", mustParse(t, "A", sem("B"), ""), lookup)
	require.ErrorAs(t, err, &fe)
	require.Contains(t, fe.Message, "A → B → D → A")
	graph["D"] = sem("X")
	require.NoError(t, CheckCycles(ctx, "A", mustParse(t, "A", sem("B"), ""), lookup))

	// Self target (Parse refuses it too; CheckCycles on its own as well).
	err = CheckCycles(ctx, "A", Config{Routes: []Route{{Type: TypeSemaphore, Target: "A"}}}, lookup)
	require.ErrorAs(t, err, &fe)
	require.ErrorIs(t, err, ErrCycle)
	require.Contains(t, fe.Message, "itself")

	// Lookup errors are returned, not taken as cycles.
	graph["F"] = "boom"
	err = CheckCycles(ctx, "A", mustParse(t, "A", sem("F"), ""), lookup)
	require.ErrorContains(t, err, "store down")
	require.NotErrorIs(t, err, ErrCycle)

	// No semaphore routes: lookup is never called.
	require.NoError(t, CheckCycles(ctx, "A", Config{}, func(context.Context, string) (Config, bool, error) {
		t.Fatal("lookup called")
		return Config{}, false, nil
	}))
}

func FuzzParse(f *testing.F) {
	f.Add(`[{"type":"websocket","channel":"c"},{"type":"https","url":"https://example.com/h","timeout":"5s","attempts":2},{"type":"semaphore","target":"b","release":true}]`,
		`{"expr":"{\"payload\": payload}","canOverrideRouting":true}`, "{\"a\":1}")
	f.Add(`[{"type":"https","url":"https://[::1]:99/"}]`, `{"expr":"{\"route\": {\"type\": \"websocket\"}}","canOverrideRouting":true}`, "null")
	f.Add(`null`, `{"expr":"payload"}`, "[1,2]")
	f.Add(`[{}]`, `{}`, "")
	f.Fuzz(func(t *testing.T, routes, mapping, payload string) {
		cfg, err := Parse("self", json.RawMessage(routes), json.RawMessage(mapping), Options{})
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field == "" || !strings.HasPrefix(fe.Message, fe.Field+": ") {
				t.Fatalf("error %v is not a FieldError naming its field", err)
			}
			return
		}
		if err := AssignSecrets(&cfg, Config{}); err != nil {
			t.Fatal(err)
		}
		extra, err := cfg.EncodeExtra()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeExtra(extra)
		if err != nil {
			t.Fatalf("stored config %s does not decode: %v", extra, err)
		}
		again, err := back.EncodeExtra()
		if err != nil || string(again) != string(extra) {
			t.Fatalf("round trip changed %s into %s (%v)", extra, again, err)
		}
		chain := cfg.Chain()
		if len(chain) == 0 {
			t.Fatal("empty chain")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		res, err := cfg.Map(ctx, MapInput{Payload: json.RawMessage(payload), Semaphore: "self"})
		if err != nil {
			var me *MapError
			if !errors.As(err, &me) {
				t.Fatalf("Map error %v is not a MapError", err)
			}
			return
		}
		if res.Payload != nil && !json.Valid(res.Payload) {
			t.Fatalf("Map returned invalid JSON %q", res.Payload)
		}
		if res.Route != nil {
			if out := Override(chain, *res.Route); len(out) == 0 || out[0] != *res.Route {
				t.Fatalf("Override lost the returned route")
			}
		}
	})
}
