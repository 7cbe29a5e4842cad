package loadgen

import "testing"

// The generator measures a direct socket pair: every frame arrives, and
// round trips complete.
func TestDirect(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	r, err := Throughput([]*Port{a, b}, 64, 1e8)
	if err != nil || r.Received == 0 || r.Received != r.Sent || r.FramesPerSec <= 0 {
		t.Fatalf("Throughput = %+v, %v; want every frame received", r, err)
	}
	rt, err := RTT(a, b, 1500, 100)
	if err != nil || rt.RTTLost != 0 || rt.P50 <= 0 || rt.P99 < rt.P50 {
		t.Fatalf("RTT = %+v, %v", rt, err)
	}
}

// One frame per system call (the daemon transport's way) moves every
// frame too.
func TestDirectPerFrame(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	a.SetBatch(1)
	b.SetBatch(0) // clamps to 1
	if a.perCall() != 1 || b.perCall() != 1 {
		t.Fatalf("perCall = %d, %d; want 1, 1", a.perCall(), b.perCall())
	}
	r, err := Throughput([]*Port{a, b}, 1500, 1e8)
	if err != nil || r.Received == 0 || r.Received != r.Sent {
		t.Fatalf("Throughput = %+v, %v; want every frame received", r, err)
	}
}
