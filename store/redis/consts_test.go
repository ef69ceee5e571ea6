package redisstore

import (
	"testing"
)

// TestLuaConstsGenerated fails when lua/consts.lua is not what the Go
// values give: run go generate ./store/redis.
func TestLuaConstsGenerated(t *testing.T) {
	if got, want := readLua("consts.lua"), LuaConsts(); got != want {
		t.Fatalf("lua/consts.lua is stale: run `go generate ./store/redis`\n--- file ---\n%s\n--- from Go ---\n%s", got, want)
	}
}

// TestLuaConstsAreUsed: every constant is referenced by some script, so a
// renamed one cannot linger unused while the scripts carry a literal.
func TestLuaConstsAreUsed(t *testing.T) {
	entries, err := luaFS.ReadDir("lua")
	if err != nil {
		t.Fatal(err)
	}
	var all string
	for _, e := range entries {
		if e.Name() != "consts.lua" {
			all += readLua(e.Name())
		}
	}
	for _, c := range luaConsts() {
		if !containsWord(all, c.Name) {
			t.Errorf("constant %s is used by no script", c.Name)
		}
	}
}

func containsWord(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i:i+len(w)] != w {
			continue
		}
		before := i == 0 || !isIdent(s[i-1])
		after := i+len(w) == len(s) || !isIdent(s[i+len(w)])
		if before && after {
			return true
		}
	}
	return false
}

func isIdent(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
