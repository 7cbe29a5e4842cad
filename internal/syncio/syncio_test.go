package syncio

import (
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	w := NewWriter(&b)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				w.Write([]byte("abcd\n"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if got := strings.Count(b.String(), "abcd\n"); got != 800 {
		t.Fatalf("%d whole lines, want 800 (writes interleaved)", got)
	}
	b.Reset()
	if b.String() != "" {
		t.Fatal("Reset left data")
	}
}
