package etcd

import (
	"strings"
	"testing"
)

// TestLockValue: values round-trip, for tokens that are prefixes of one
// another, contain the separators, digits, NUL or 0xff bytes.
func TestLockValue(t *testing.T) {
	tokens := []string{
		"a", "ab", "a;", "a:", "a;1", "1", "11", "1:a", "2:ab", ";", ":", "\x00", "a\x00", "\xff", "a\xff", "\xff\xff",
		"ab;", "b", strings.Repeat("x", 10), strings.Repeat("x", 11), strings.Repeat("\xff", 256), "0", "01",
	}
	fences := []int64{0, 1, 9, 10, 12345, 1<<63 - 1}
	for _, tok := range tokens {
		for _, f := range fences {
			v := lockValue(tok, f)
			got, gf, ok := parseValue([]byte(v))
			if !ok || got != tok || gf != f {
				t.Fatalf("parseValue(lockValue(%q, %d)) = %q, %d, %v", tok, f, got, gf, ok)
			}
		}
	}
	for _, bad := range []string{"", "a", "abc", ";", "1;", "x;a", "0;a", "-1;a", "1x;a", "99999999999999999999;a"} {
		if tok, _, ok := parseValue([]byte(bad)); ok {
			t.Errorf("parseValue(%q) accepted, token %q", bad, tok)
		}
	}
}
