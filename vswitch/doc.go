// Package vswitch is an Ethernet switch for User-Mode Linux labs: ports
// with MAC learning and aging, flooding of broadcast, multicast and unknown
// destinations, a hub mode, 802.1Q VLANs (untagged access ports and tagged
// trunks), jumbo frames, per-port counters and bounded per-port queues, and
// the transports UML instances use to reach it: the vector BESS transport
// (a listening SOCK_SEQPACKET socket, one frame per packet) and the
// uml_switch daemon protocol (a control stream socket and one datagram data
// socket per port), which vde_plug also speaks.
//
// A Switch forwards between ports; each port is a connected packet socket
// (SOCK_SEQPACKET or a connected SOCK_DGRAM) that carries one raw Ethernet
// frame per packet. Each port has a reader goroutine that receives frames
// in batches (recvmmsg) and forwards them, sending straight to the
// destination socket without blocking when that port's queue is empty,
// and a writer goroutine that drains the port's bounded queue in batches
// (sendmmsg) when the destination is slow. A full queue drops frames and
// counts them; flooded frames may fill only half of a queue, so a port
// that floods cannot starve unicast traffic. The hot path does not
// allocate: frame buffers come from a pool and are reference counted.
package vswitch
