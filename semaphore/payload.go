package semaphore

import (
	"strconv"
)

// CodeInvalidJSON is the validation code of a payload that is JSON but that
// receivers could not decode (SPEC §3: a number beyond float64's range).
const CodeInvalidJSON = "invalid_json"

// checkPayloadNumbers refuses a (valid JSON) payload holding a number
// outside float64's range, such as 1e999: it would be stored and delivered
// verbatim, and most receivers fail to decode it. One pass over the bytes,
// outside strings; only numbers long enough or with an exponent are
// parsed. A number that underflows (1e-999) decodes as 0 everywhere and is
// kept.
func checkPayloadNumbers(p []byte) error {
	inString := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		if inString {
			switch c {
			case '\\':
				i++ // the escaped byte
			case '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
			continue
		}
		if c != '-' && (c < '0' || c > '9') {
			continue
		}
		j, exp := i, false
		for j < len(p) && isNumberByte(p[j]) {
			exp = exp || p[j] == 'e' || p[j] == 'E'
			j++
		}
		// Without an exponent, at most 308 digits fit in float64.
		if exp || j-i > 300 {
			if _, err := strconv.ParseFloat(string(p[i:j]), 64); err != nil {
				return invalid(CodeInvalidJSON, "payload", "payload holds the number %s, outside the range of a 64-bit float that receivers decode", truncate(string(p[i:j]), 32))
			}
		}
		i = j - 1
	}
	return nil
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}
