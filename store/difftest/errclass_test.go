package difftest

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/semaphored/semaphored/store"
)

// An error's class is the name of the exported Err* sentinel of package
// store it matches ("ErrLeaseNotFound"), "ok" for nil, or "other:<message>".
// Both stores must give the same class for the same operation.
//
// The sentinels are read from the store package's source (../*.go), so a
// sentinel added there (say ErrKeyExists) is recognised without a change
// here: a sentinel this file references by value is matched with
// errors.Is, any other one by its message anywhere in the error's chain
// (a sentinel is an errors.New value, and wrapping keeps it in the chain).

// sentinel is one exported Err* variable of package store.
type sentinel struct {
	name string
	msg  string // its errors.New message
	err  error  // its value, when this file knows it
}

// knownSentinels are the sentinels this file can reference by value.
var knownSentinels = map[string]error{
	"ErrSemaphoreNotFound": store.ErrSemaphoreNotFound,
	"ErrLeaseNotFound":     store.ErrLeaseNotFound,
	"ErrNoPermit":          store.ErrNoPermit,
	"ErrKeyNotFound":       store.ErrKeyNotFound,
	"ErrTenantExists":      store.ErrTenantExists,
	"ErrTenantNotFound":    store.ErrTenantNotFound,
	"ErrWeightTooLarge":    store.ErrWeightTooLarge,
	"ErrUnavailable":       store.ErrUnavailable,
	"ErrJobNotFound":       store.ErrJobNotFound,
	"ErrInvalidState":      store.ErrInvalidState,
	"ErrQueueFull":         store.ErrQueueFull,
	"ErrStaleLease":        store.ErrStaleLease,
	"ErrSessionNotFound":   store.ErrSessionNotFound,
}

var (
	sentinelsOnce sync.Once
	sentinels     []sentinel
	sentinelsErr  error
)

// loadSentinels parses the store package's source for its exported
// `ErrX = errors.New("...")` variables, in declaration order.
func loadSentinels(t *testing.T) {
	t.Helper()
	sentinelsOnce.Do(func() { sentinels, sentinelsErr = parseSentinels("..") })
	if sentinelsErr != nil {
		t.Fatalf("reading the store package's error sentinels: %v", sentinelsErr)
	}
	for name := range knownSentinels {
		found := false
		for _, s := range sentinels {
			found = found || s.name == name
		}
		if !found {
			t.Fatalf("sentinel store.%s not found in ../*.go: the parser missed it", name)
		}
	}
}

func parseSentinels(dir string) ([]sentinel, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var out []sentinel
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			return nil, err
		}
		if file.Name.Name != "store" {
			return nil, fmt.Errorf("%s is package %s, not store", f, file.Name.Name)
		}
		for _, d := range file.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if !strings.HasPrefix(n.Name, "Err") || !n.IsExported() || i >= len(vs.Values) {
						continue
					}
					call, ok := vs.Values[i].(*ast.CallExpr)
					if !ok || len(call.Args) != 1 {
						continue
					}
					sel, ok := call.Fun.(*ast.SelectorExpr)
					lit, ok2 := call.Args[0].(*ast.BasicLit)
					if !ok || !ok2 || sel.Sel.Name != "New" || lit.Kind != token.STRING {
						continue
					}
					msg, err := strconv.Unquote(lit.Value)
					if err != nil {
						return nil, err
					}
					out = append(out, sentinel{name: n.Name, msg: msg, err: knownSentinels[n.Name]})
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Err* sentinels in %s", dir)
	}
	return out, nil
}

// errClass returns the class of err (see the top of this file).
func errClass(err error) string {
	if err == nil {
		return "ok"
	}
	for _, s := range sentinels {
		if s.err != nil && errors.Is(err, s.err) {
			return s.name
		}
	}
	var msgs []string
	walkErr(err, func(e error) { msgs = append(msgs, e.Error()) })
	for _, s := range sentinels {
		for _, m := range msgs {
			if m == s.msg {
				return s.name
			}
		}
	}
	return "other:" + err.Error()
}

// walkErr calls f with err and every error in its chain.
func walkErr(err error, f func(error)) {
	if err == nil {
		return
	}
	f(err)
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		walkErr(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			walkErr(e, f)
		}
	}
}
