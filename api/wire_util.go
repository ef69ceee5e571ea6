package api

import (
	"reflect"
	"strconv"
)

func reflectTypeOfDuration() reflect.Type { return reflect.TypeOf(Duration(0)) }

func strconvQuote(s string) string { return strconv.Quote(s) }
