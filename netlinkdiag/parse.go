package netlinkdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ErrMalformed is wrapped by every error about bytes that do not decode: a
// short or overlong message or attribute, an unknown address family, an
// unexpected message type. The error says what was wrong and at which byte
// offset of the buffer.
var ErrMalformed = errors.New("netlinkdiag: malformed netlink message")

// ErrDumpInterrupted is returned, possibly wrapped, by a dump whose replies
// carried NLM_F_DUMP_INTR: the socket tables changed during the walk, so a
// socket may have been missed or reported twice. It is returned only after
// the whole dump was read and every socket passed to the callback; the
// caller decides whether to use or retry the result.
var ErrDumpInterrupted = errors.New("netlinkdiag: dump interrupted by a concurrent change, results may be inconsistent")

// ErrUnsupported is wrapped by the error for a dump the kernel answered with
// ENOENT or EOPNOTSUPP: it has no sock_diag handler for TCP in this network
// namespace (the inet_diag or tcp_diag module is missing or not loaded).
// errors.Is(ErrUnsupported, errors.ErrUnsupported) holds. An error wrapping
// it is never os.ErrNotExist or ErrNamespaceGone: the namespace is there.
var ErrUnsupported = fmt.Errorf("netlinkdiag: no sock_diag handler for TCP (is tcp_diag loaded?): %w", errors.ErrUnsupported)

func malformed(off int, format string, args ...any) error {
	return fmt.Errorf("%w: %s at offset %d", ErrMalformed, fmt.Sprintf(format, args...), off)
}

// Parse decodes one receive buffer of netlink messages, as a dump reply
// arrives, and calls fn for each socket. It does no I/O.
//
// Messages whose sequence number or port id differ from seq and portID
// belong to another request and are skipped. Parse stops at NLMSG_DONE (or
// an NLMSG_ERROR acknowledgement) for this request and reports done; it
// reports interrupted if any message for this request carried
// NLM_F_DUMP_INTR. A negative errno in NLMSG_ERROR or NLMSG_DONE is returned
// as an error that names it: for ENOENT and EOPNOTSUPP, which mean the
// kernel cannot dump TCP sockets at all, one wrapping ErrUnsupported (and
// not syscall.Errno, so not os.ErrNotExist); for any other errno, one
// wrapping syscall.Errno, so errors.Is(err, os.ErrPermission) and
// errors.Is(err, unix.ENOBUFS) work. Bytes that do not decode yield an
// error wrapping ErrMalformed. An error from fn stops Parse and is returned
// unchanged. Parse never returns ErrNamespaceGone.
//
// The Socket passed to fn is reused for the next message and its Attrs
// alias b.
func Parse(b []byte, seq, portID uint32, fn func(*Socket) error) (done bool, interrupted bool, err error) {
	var s Socket
	return parse(b, seq, portID, &s, fn)
}

// parse is Parse decoding into s, so that a dump reuses one Socket for all
// its buffers.
func parse(b []byte, seq, portID uint32, s *Socket, fn func(*Socket) error) (done bool, interrupted bool, err error) {
	ne := binary.NativeEndian
	for off := 0; off < len(b); {
		if len(b)-off < nlmsgHdrLen {
			return false, interrupted, malformed(off, "%d bytes left, short of a %d-byte message header", len(b)-off, nlmsgHdrLen)
		}
		h := b[off:]
		mlen := int(ne.Uint32(h[0:4]))
		typ := ne.Uint16(h[4:6])
		flags := ne.Uint16(h[6:8])
		mseq := ne.Uint32(h[8:12])
		mpid := ne.Uint32(h[12:16])
		if mlen < nlmsgHdrLen {
			return false, interrupted, malformed(off, "nlmsg_len %d shorter than the header", mlen)
		}
		if mlen > len(h) {
			return false, interrupted, malformed(off, "nlmsg_len %d beyond the %d bytes left", mlen, len(h))
		}
		payload := h[nlmsgHdrLen:mlen]
		msgOff := off
		off += min(align4(mlen), len(h))

		if mseq != seq || mpid != portID {
			continue // a reply to some other request
		}
		if flags&nlmFDumpIntr != 0 {
			interrupted = true
		}
		switch typ {
		case nlmsgNoop:
			continue
		case nlmsgDone:
			// The dump's final status rides along when there is room for it.
			if len(payload) >= 4 {
				if err := errnoError(msgOff, "NLMSG_DONE", int32(ne.Uint32(payload))); err != nil {
					return true, interrupted, err
				}
			}
			return true, interrupted, nil
		case nlmsgError:
			if len(payload) < 4 {
				return false, interrupted, malformed(msgOff, "NLMSG_ERROR payload of %d bytes, short of an errno", len(payload))
			}
			// Errno 0 is an acknowledgement: the request is over.
			return true, interrupted, errnoError(msgOff, "NLMSG_ERROR", int32(ne.Uint32(payload)))
		case tcpdiagGetsock, sockDiagByFamily:
			if err := decodeSocket(s, payload, msgOff+nlmsgHdrLen); err != nil {
				return false, interrupted, err
			}
			if err := fn(s); err != nil {
				return false, interrupted, err
			}
		default:
			return false, interrupted, malformed(msgOff, "unexpected message type %d", typ)
		}
	}
	return false, interrupted, nil
}

// errnoError turns the int error of an NLMSG_ERROR or NLMSG_DONE into a Go
// error: nil for 0, ErrUnsupported for a kernel that has no TCP handler, a
// wrapped syscall.Errno for any other negative errno.
func errnoError(off int, what string, code int32) error {
	switch {
	case code == 0:
		return nil
	case code > 0:
		return malformed(off, "%s with positive error %d", what, code)
	case code == -errnoENOENT:
		// inet_diag finds no handler for the protocol; not a missing file,
		// so no syscall.Errno, which would make it os.ErrNotExist.
		return fmt.Errorf("netlinkdiag: kernel answered the dump with %s ENOENT: %w", what, ErrUnsupported)
	case code == -errnoEOPNOTSUPP:
		return fmt.Errorf("netlinkdiag: kernel answered the dump with %s EOPNOTSUPP: %w", what, ErrUnsupported)
	}
	return fmt.Errorf("netlinkdiag: kernel answered the dump with %s: %w", what, syscall.Errno(-code))
}

// decodeSocket fills s from the payload of one inet_diag reply; off is the
// payload's offset in the receive buffer, for errors.
func decodeSocket(s *Socket, p []byte, off int) error {
	if len(p) < inetDiagMsgLen {
		return malformed(off, "inet_diag_msg of %d bytes, short of %d", len(p), inetDiagMsgLen)
	}
	ne := binary.NativeEndian
	s.Family = p[0]
	switch s.Family {
	case afInet:
		s.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[8:12])), binary.BigEndian.Uint16(p[4:6]))
		s.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[24:28])), binary.BigEndian.Uint16(p[6:8]))
	case afInet6:
		s.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[8:24])), binary.BigEndian.Uint16(p[4:6]))
		s.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[24:40])), binary.BigEndian.Uint16(p[6:8]))
	default:
		return malformed(off, "address family %d, want AF_INET or AF_INET6", s.Family)
	}
	s.State = p[1]
	s.Timer = p[2]
	s.Retrans = p[3]
	s.IfIndex = ne.Uint32(p[40:44])
	s.Cookie = uint64(ne.Uint32(p[44:48])) | uint64(ne.Uint32(p[48:52]))<<32
	s.Expires = ne.Uint32(p[52:56])
	s.RQueue = ne.Uint32(p[56:60])
	s.WQueue = ne.Uint32(p[60:64])
	s.UID = ne.Uint32(p[64:68])
	s.Inode = ne.Uint32(p[68:72])
	s.Attrs = p[inetDiagMsgLen:len(p):len(p)]
	return nil
}

// Attributes walks the netlink attributes (struct rtattr, 4-byte aligned) in
// b, such as Socket.Attrs, and calls fn with each attribute's type (flag bits
// masked off) and value. The value aliases b. A length that is too short,
// runs past b, or leftover bytes too few for a header yield an error
// wrapping ErrMalformed with the offset in b; an error from fn stops the
// walk and is returned unchanged.
func Attributes(b []byte, fn func(typ uint16, data []byte) error) error {
	ne := binary.NativeEndian
	for off := 0; off < len(b); {
		if len(b)-off < 4 {
			return malformed(off, "%d bytes left, short of a 4-byte attribute header", len(b)-off)
		}
		alen := int(ne.Uint16(b[off : off+2]))
		typ := ne.Uint16(b[off+2:off+4]) & nlaTypeMask
		if alen < 4 {
			return malformed(off, "attribute %d length %d shorter than its header", typ, alen)
		}
		if alen > len(b)-off {
			return malformed(off, "attribute %d length %d beyond the %d bytes left", typ, alen, len(b)-off)
		}
		data := b[off+4 : off+alen : off+alen]
		off += min(align4(alen), len(b)-off)
		if err := fn(typ, data); err != nil {
			return err
		}
	}
	return nil
}

// nlaTypeMask clears NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const nlaTypeMask = 0x3fff

func align4(n int) int { return (n + 3) &^ 3 }
