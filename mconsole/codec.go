package mconsole

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Wire constants of the version 2 protocol. All integers are in the host's
// byte order, since both ends always run on the same machine.
const (
	Magic           = 0xCAFEBABE
	ProtocolVersion = 2
	// MaxData is the size of a request's and a reply's data field. A
	// command holds at most MaxData-1 bytes: the kernel rejects len >= 512.
	MaxData = 512
	// RequestSize is what uml_mconsole sends for every command: the whole
	// struct, zero padded.
	RequestSize = 12 + MaxData

	replyHeader  = 12
	notifyHeader = 16
	// MaxNotifyData bounds a notification's data (/proc/mconsole takes at
	// most 512 bytes; a socket path or panic message is shorter).
	MaxNotifyData = 4096
)

var order = binary.NativeEndian

// FormatError reports a datagram that is not a well-formed message.
type FormatError struct {
	What   string // "request", "reply" or "notification"
	Offset int    // byte offset of the bad field
	Reason string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("mconsole %s: offset %d: %s", e.What, e.Offset, e.Reason)
}

// Request is a command as it travels to the kernel.
type Request struct {
	Version uint32
	Text    string
}

// AppendRequest appends the RequestSize-byte encoding of a version 2
// request carrying text, exactly as uml_mconsole sends it. Text must be
// shorter than MaxData bytes and free of NUL bytes (the kernel ends the
// command at the first NUL).
func AppendRequest(b []byte, text string) ([]byte, error) {
	if len(text) >= MaxData {
		return b, fmt.Errorf("mconsole command is %d bytes, the kernel takes at most %d", len(text), MaxData-1)
	}
	if i := bytes.IndexByte([]byte(text), 0); i >= 0 {
		return b, fmt.Errorf("mconsole command has a NUL byte at %d", i)
	}
	b = order.AppendUint32(b, Magic)
	b = order.AppendUint32(b, ProtocolVersion)
	b = order.AppendUint32(b, uint32(len(text)))
	b = append(b, text...)
	return append(b, make([]byte, MaxData-len(text))...), nil
}

// ParseRequest decodes a request datagram the way the kernel does: the
// magic must match, len must be below MaxData and within the datagram;
// the text ends at len or at the first NUL. Short datagrams (12+len
// bytes) are accepted, as the kernel accepts them.
func ParseRequest(b []byte) (Request, error) {
	fe := func(off int, r string) error { return &FormatError{What: "request", Offset: off, Reason: r} }
	if len(b) < 12 {
		return Request{}, fe(0, fmt.Sprintf("%d bytes, want at least 12", len(b)))
	}
	if m := order.Uint32(b); m != Magic {
		return Request{}, fe(0, fmt.Sprintf("magic %#x, want %#x", m, uint32(Magic)))
	}
	n := order.Uint32(b[8:])
	if n >= MaxData {
		return Request{}, fe(8, fmt.Sprintf("len %d, want below %d", n, MaxData))
	}
	if int(n) > len(b)-12 {
		return Request{}, fe(8, fmt.Sprintf("len %d but only %d data bytes", n, len(b)-12))
	}
	data := b[12 : 12+n]
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return Request{Version: order.Uint32(b[4:]), Text: string(data)}, nil
}

// Packet is one reply datagram. A reply is one or more packets; all but
// the last have More set.
type Packet struct {
	// Err is the raw err field: 0 for success, 1 for an error, or a
	// negative errno (config and remove).
	Err  int32
	More bool
	// Text is the chunk up to its NUL, at most MaxData-1 bytes.
	Text string
}

// AppendPacket appends p's encoding as the kernel sends it: 12 header
// bytes, then the text and its NUL (len counts the NUL).
func AppendPacket(b []byte, p Packet) ([]byte, error) {
	if len(p.Text) >= MaxData {
		return b, fmt.Errorf("mconsole reply chunk is %d bytes, at most %d fit", len(p.Text), MaxData-1)
	}
	more := uint32(0)
	if p.More {
		more = 1
	}
	b = order.AppendUint32(b, uint32(p.Err))
	b = order.AppendUint32(b, more)
	b = order.AppendUint32(b, uint32(len(p.Text)+1))
	b = append(b, p.Text...)
	return append(b, 0), nil
}

// ParsePacket decodes one reply datagram. len must fit in the datagram and
// in MaxData; the text ends at the first NUL.
func ParsePacket(b []byte) (Packet, error) {
	fe := func(off int, r string) error { return &FormatError{What: "reply", Offset: off, Reason: r} }
	if bytes.HasPrefix(b, []byte("ERR ")) {
		// The kernel answers a request it cannot parse as version 2 with
		// a bare text datagram.
		return Packet{}, fe(0, fmt.Sprintf("text reply %q: the kernel did not take the request's header", bytes.TrimRight(b, "\x00")))
	}
	if len(b) < replyHeader {
		return Packet{}, fe(0, fmt.Sprintf("%d bytes, want at least %d", len(b), replyHeader))
	}
	more := order.Uint32(b[4:])
	if more > 1 {
		return Packet{}, fe(4, fmt.Sprintf("more is %d, want 0 or 1", more))
	}
	n := order.Uint32(b[8:])
	if n > MaxData {
		return Packet{}, fe(8, fmt.Sprintf("len %d, want at most %d", n, MaxData))
	}
	if int(n) > len(b)-replyHeader {
		return Packet{}, fe(8, fmt.Sprintf("len %d but only %d data bytes", n, len(b)-replyHeader))
	}
	data := b[replyHeader : replyHeader+int(n)]
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return Packet{Err: int32(order.Uint32(b)), More: more == 1, Text: string(data)}, nil
}

// NotifyType says what a notification reports.
type NotifyType uint32

// Notification types (the kernel's enum mconsole_notify_types).
const (
	NotifySocket NotifyType = 0 // the mconsole socket is ready; data is its path
	NotifyPanic  NotifyType = 1 // the kernel panicked; data is the message
	NotifyHang   NotifyType = 2 // sent by the host's uml_watchdog, never by the kernel
	NotifyUser   NotifyType = 3 // the guest wrote data to /proc/mconsole
)

func (t NotifyType) String() string {
	switch t {
	case NotifySocket:
		return "socket"
	case NotifyPanic:
		return "panic"
	case NotifyHang:
		return "hang"
	case NotifyUser:
		return "user"
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// Notification is one datagram the kernel sends to the notify socket.
type Notification struct {
	Type NotifyType
	// Data is the payload as sent: a NUL-terminated string for socket and
	// panic, the guest's exact bytes for user.
	Data []byte
}

// AppendNotification appends n's encoding.
func AppendNotification(b []byte, n Notification) ([]byte, error) {
	if len(n.Data) > MaxNotifyData {
		return b, fmt.Errorf("mconsole notification data is %d bytes, at most %d", len(n.Data), MaxNotifyData)
	}
	b = order.AppendUint32(b, Magic)
	b = order.AppendUint32(b, ProtocolVersion)
	b = order.AppendUint32(b, uint32(n.Type))
	b = order.AppendUint32(b, uint32(len(n.Data)))
	return append(b, n.Data...), nil
}

// ParseNotification decodes a notify datagram. The data is copied.
func ParseNotification(b []byte) (Notification, error) {
	fe := func(off int, r string) error { return &FormatError{What: "notification", Offset: off, Reason: r} }
	if len(b) < notifyHeader {
		return Notification{}, fe(0, fmt.Sprintf("%d bytes, want at least %d", len(b), notifyHeader))
	}
	if m := order.Uint32(b); m != Magic {
		return Notification{}, fe(0, fmt.Sprintf("magic %#x, want %#x", m, uint32(Magic)))
	}
	if v := order.Uint32(b[4:]); v != ProtocolVersion {
		return Notification{}, fe(4, fmt.Sprintf("version %d, want %d", v, ProtocolVersion))
	}
	n := order.Uint32(b[12:])
	if n > MaxNotifyData || int(n) > len(b)-notifyHeader {
		return Notification{}, fe(12, fmt.Sprintf("len %d but %d data bytes", n, len(b)-notifyHeader))
	}
	return Notification{
		Type: NotifyType(order.Uint32(b[8:])),
		Data: bytes.Clone(b[notifyHeader : notifyHeader+int(n)]),
	}, nil
}

// Text returns the data as a string, up to its first NUL.
func (n Notification) Text() string {
	d := n.Data
	if i := bytes.IndexByte(d, 0); i >= 0 {
		d = d[:i]
	}
	return string(d)
}
