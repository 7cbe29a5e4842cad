// Package mconsole speaks the User-Mode Linux management console
// protocol: a client for every command of the 6.1 kernel (version, halt,
// reboot, config, remove, sysrq, help, cad, stop, go, log, proc, stack),
// the wire codec, and a listener for the kernel's notify socket
// (mconsole=notify:PATH), which says when an instance's console is ready
// and when it panicked.
//
// The kernel answers a request with one or more datagrams and never
// blocks: when the client's receive queue is full (net.unix.max_dgram_qlen,
// 10 by default) it drops packets, the last one included. A Client
// therefore connects its socket to the kernel's, which lifts that queue
// limit for the kernel's replies, and reads every reply in a tight loop.
// uml_mconsole does neither and loses packets of long replies on a busy
// host.
package mconsole
