package vswitch

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The uml_switch daemon protocol's request (version 3), as UML and
// libvdeplug send it on the control socket, in host (little-endian) order:
// magic, version, type, a struct sockaddr_un naming the client's data
// socket, and (libvdeplug only) a description without a NUL.
const (
	RequestMagic   = 0xfeedface
	RequestVersion = 3
	// RequestMinLen is the request without a description (UML sends 2
	// more bytes of struct padding).
	RequestMinLen = 12 + SockaddrLen
	// RequestMaxLen is the request with the longest description.
	RequestMaxLen = RequestMinLen + 128
	// SockaddrLen is the size of a struct sockaddr_un: the length of the
	// switch's reply and of every data address.
	SockaddrLen = 110
)

// Request types (the low byte of the type field).
const (
	ReqNewControl = 0 // a new port; type>>8 may ask for a port number
	ReqNewPort0   = 1 // port 0, the management port (vde_switch)
)

// Request is a parsed daemon-protocol request.
type Request struct {
	Version int
	Type    int // ReqNewControl or ReqNewPort0
	Port    int // the port asked for, 0 for any
	// Addr is the client's data socket address: the 108 bytes of
	// sun_path, sent to with the full 110-byte length. For UML it is an
	// abstract name with garbage after the pid; treat it as opaque.
	Addr [108]byte
	// Description is what libvdeplug clients call themselves.
	Description string
}

// RequestError is a malformed request.
type RequestError struct {
	Offset int    // byte offset of the bad field
	Reason string // what is wrong
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("daemon request: at byte %d: %s", e.Offset, e.Reason)
}

// ParseRequest parses a version 3 request of RequestMinLen to RequestMaxLen
// bytes. Errors are *RequestError.
func ParseRequest(b []byte) (*Request, error) {
	if len(b) < 8 {
		return nil, &RequestError{len(b), fmt.Sprintf("request of %d bytes is shorter than its magic and version", len(b))}
	}
	if m := binary.LittleEndian.Uint32(b); m != RequestMagic {
		return nil, &RequestError{0, fmt.Sprintf("magic %#08x, want %#08x (not a uml_switch v3 client)", m, RequestMagic)}
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != RequestVersion {
		return nil, &RequestError{4, fmt.Sprintf("version %d is not supported (only %d)", v, RequestVersion)}
	}
	if len(b) < RequestMinLen {
		return nil, &RequestError{len(b), fmt.Sprintf("request of %d bytes is shorter than %d", len(b), RequestMinLen)}
	}
	if len(b) > RequestMaxLen {
		return nil, &RequestError{RequestMaxLen, fmt.Sprintf("request of %d bytes is longer than %d", len(b), RequestMaxLen)}
	}
	typ := binary.LittleEndian.Uint32(b[8:])
	r := &Request{Version: RequestVersion, Type: int(typ & 0xff), Port: int(typ >> 8)}
	if r.Type != ReqNewControl && r.Type != ReqNewPort0 {
		return nil, &RequestError{8, fmt.Sprintf("request type %d is unknown", r.Type)}
	}
	if fam := binary.LittleEndian.Uint16(b[12:]); fam != 1 {
		return nil, &RequestError{12, fmt.Sprintf("address family %d, want 1 (AF_UNIX)", fam)}
	}
	copy(r.Addr[:], b[14:RequestMinLen])
	if r.Addr[0] != 0 && bytes.IndexByte(r.Addr[:], 0) < 0 {
		return nil, &RequestError{14, "data socket path is not NUL-terminated"}
	}
	if r.Addr[0] == 0 && bytes.Count(r.Addr[:], []byte{0}) == len(r.Addr) {
		return nil, &RequestError{14, "data socket address is empty"}
	}
	if d := b[RequestMinLen:]; len(d) > 0 {
		if i := bytes.IndexByte(d, 0); i >= 0 {
			d = d[:i]
		}
		printable := true
		for _, c := range d {
			if c < 0x20 || c > 0x7e {
				printable = false
				break
			}
		}
		if printable {
			r.Description = string(d)
		}
	}
	return r, nil
}

// AppendRequest appends the wire form of r (with its description).
func AppendRequest(b []byte, r *Request) []byte {
	b = binary.LittleEndian.AppendUint32(b, RequestMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Version))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Type|r.Port<<8))
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = append(b, r.Addr[:]...)
	return append(b, r.Description...)
}

// AddrPath returns a filesystem data address as a path, or "@name" for
// an abstract one (up to its first NUL after the leading one).
func (r *Request) AddrPath() string {
	a := r.Addr[:]
	if a[0] == 0 {
		a = a[1:]
		if i := bytes.IndexByte(a, 0); i >= 0 {
			a = a[:i]
		}
		return "@" + string(a)
	}
	return string(a[:bytes.IndexByte(a, 0)])
}
