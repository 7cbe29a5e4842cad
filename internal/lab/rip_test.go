package lab

import (
	"context"
	"testing"
	"time"
)

// The rip example, on the router image with FRR's ripd: RIP converges
// (every router learns the subnets it is not on, with the hop count as
// metric), the lab's checks pass (host to host across three routers), and
// when the r2-r3 link goes down its routes are withdrawn: at once on r1
// (r2 sends a triggered update that poisons them), on r3 when they time
// out (15 s with the example's timers); when the link comes back, so do
// the routes and the path.
func TestKernelRIP(t *testing.T) {
	l, o := routerLab(t, "rip")
	// The routers' startup scripts start FRR and wait for RIP.
	up := upRouterLab(t, l, o)
	converged := map[string]string{
		"r1": "10.0.3.0/24 10.0.4.0/24",
		"r2": "10.0.1.0/24 10.0.4.0/24",
		"r3": "10.0.1.0/24 10.0.2.0/24",
	}
	waitRoutes(t, l, "rip", converged, 60*time.Second)
	t.Logf("lab up and RIP converged in %.1fs", up.Seconds())
	testShipped(t, l, o, `ok   r1         exec r1 "vtysh -c 'show ip route rip'" contains "R>* 10.0.4.0/24 [120/3] via 10.0.2.2"`)

	// The link between r2 and r3 (domain C) goes down on r2's side.
	mustExec(t, l, "r2", "ip link set eth1 down")
	lostR1 := waitRoutes(t, l, "rip", map[string]string{"r1": "", "r2": "10.0.1.0/24"}, 60*time.Second)
	lostR3 := waitRoutes(t, l, "rip", map[string]string{"r3": ""}, 60*time.Second)
	if code, out, _ := Exec(context.Background(), l, "pc1", "ping -c 1 -W 2 10.0.4.2", 30*time.Second); code == 0 {
		t.Errorf("pc1 reaches pc2 with the r2-r3 link down: %q", out)
	}
	mustExec(t, l, "r2", "ip link set eth1 up")
	back := waitRoutes(t, l, "rip", converged, 60*time.Second)
	mustExec(t, l, "pc1", "ping -c 1 -W 2 10.0.4.2")
	t.Logf("r2-r3 link down: r1's routes through it withdrawn in %.1fs, r3's timed out %.1fs later; link up: routes back in %.1fs",
		lostR1.Seconds(), lostR3.Seconds(), back.Seconds())

	if err := Down(context.Background(), l, nil, true, o); err != nil {
		t.Fatalf("Down: %v", err)
	}
}
