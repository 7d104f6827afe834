package testenv

import (
	"bufio"
	"io"
	"net"
	"sync"
	"testing"
)

// ProxyMode is the fault a Proxy plays.
type ProxyMode int

const (
	// ProxyPass forwards both ways.
	ProxyPass ProxyMode = iota
	// ProxyBlackHole accepts connections and holds every byte in either
	// direction, as a network that drops packets does, until the mode
	// changes (then the held bytes flow, as TCP retransmission would
	// deliver them).
	ProxyBlackHole
	// ProxyDropRequest closes the connection pair at the next bytes from
	// the client, before they reach the server, then passes again.
	ProxyDropRequest
	// ProxyDropResponse forwards the request but closes the connection
	// pair at the next bytes from the server, so the server acts but the
	// client never hears of it; then passes again.
	ProxyDropResponse
	// ProxyDown closes every connection and closes new ones at once.
	ProxyDown
	// ProxySwallowRequest discards the next request data from the client
	// and keeps the connection open, so the server never answers that
	// request while it answers every other one (a request lost inside the
	// server, as a proposal dropped in a leader change is); then passes
	// again. Only on HTTP/2 connections, where a unit is one frame.
	ProxySwallowRequest
)

// Proxy is a TCP proxy on loopback in front of one server, whose faults a
// test switches at will: a lost member, a lost response, a broken
// connection, without touching the server process.
type Proxy struct {
	Addr   string
	target string
	ln     net.Listener

	mu    sync.Mutex
	cond  *sync.Cond
	mode  ProxyMode
	next  ProxyMode // the mode after a one-shot drop
	conns map[net.Conn]bool
	h2    map[net.Conn]bool // whether a connection carries HTTP/2 frames
	wg    sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards to target
// (host:port). It is closed when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}, h2: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// SetMode switches the fault; ProxyDown also closes open connections.
func (p *Proxy) SetMode(m ProxyMode) { p.SetModeThen(m, ProxyPass) }

// SetModeThen switches to m; a one-shot drop is followed by next (e.g.
// ProxyDropResponse then ProxyDown: the server acted, then went away).
func (p *Proxy) SetModeThen(m, next ProxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode, p.next = m, next
	p.setLocked(m)
}

func (p *Proxy) setLocked(m ProxyMode) {
	p.mode = m
	if m == ProxyDown {
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.cond.Broadcast()
}

// Mode is the current fault (a one-shot drop returns to ProxyPass once it
// has happened).
func (p *Proxy) Mode() ProxyMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *Proxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.mode = ProxyDown
	for c := range p.conns {
		_ = c.Close()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.mode == ProxyDown
		p.mu.Unlock()
		if down {
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up, true)
		go p.pipe(up, c, false)
	}
}

// pipe copies src to dst, applying the mode before every unit: an HTTP/2
// frame when the client opened with the HTTP/2 preface (gRPC without TLS),
// so that a drop hits a request's or response's DATA frame and not a
// PING or WINDOW_UPDATE that happens to come first; a read chunk otherwise.
func (p *Proxy) pipe(src, dst net.Conn, fromClient bool) {
	defer p.wg.Done()
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		delete(p.h2, src)
		delete(p.h2, dst)
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	r := bufio.NewReaderSize(src, 64<<10)
	framed := false
	if fromClient {
		pre, err := r.Peek(len(h2Preface))
		framed = err == nil && string(pre) == h2Preface
		p.mu.Lock()
		p.h2[src] = framed
		p.cond.Broadcast()
		p.mu.Unlock()
		if framed {
			if _, err := io.CopyN(dst, r, int64(len(h2Preface))); err != nil {
				return
			}
		}
	} else {
		framed = p.isFramed(dst)
	}
	if framed {
		hdr := make([]byte, 9)
		for {
			if _, err := io.ReadFull(r, hdr); err != nil {
				return
			}
			n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
			body := make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
			const typeData = 0
			act := p.admit(fromClient, hdr[3] == typeData && n > 0)
			if act == closeConn {
				return
			}
			if act == discard {
				continue
			}
			if _, err := dst.Write(append(hdr, body...)); err != nil {
				return
			}
			hdr = hdr[:9:9]
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && p.admit(fromClient, true) != forward {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// isFramed waits until the client side of a pair has said whether it speaks
// HTTP/2 (the server speaks only after the client).
func (p *Proxy) isFramed(client net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if v, ok := p.h2[client]; ok || !p.conns[client] {
			return v
		}
		p.cond.Wait()
	}
}

type action int

const (
	forward action = iota
	discard
	closeConn
)

// admit waits out a black hole and says what to do with a unit; drops and
// swallows hit only units that carry data.
func (p *Proxy) admit(fromClient, data bool) action {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.mode == ProxyBlackHole {
		p.cond.Wait()
	}
	switch {
	case p.mode == ProxyDown:
		return closeConn
	case !data:
		return forward
	case p.mode == ProxyDropRequest && fromClient, p.mode == ProxyDropResponse && !fromClient:
		p.setLocked(p.next)
		return closeConn
	case p.mode == ProxySwallowRequest && fromClient:
		p.setLocked(p.next)
		return discard
	}
	return forward
}
