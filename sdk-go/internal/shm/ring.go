package shm

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Go's atomic loads and stores are sequentially consistent: a Store is both
// the release store and the full fence of docs/shm-protocol.md §4 and §7.1,
// and a Load is an acquire load.

// ring is the view of one ring (control block and data area) in a segment.
type ring struct {
	data []byte
	size uint64
	tail *uint64
	head *uint64
	wake *uint32
	name string
}

func newRing(mem []byte, off, size uint64, name string) ring {
	ctrl := mem[off : off+RingControlLen]
	return ring{
		data: mem[off+RingControlLen : off+RingControlLen+size],
		size: size,
		tail: (*uint64)(unsafe.Pointer(&ctrl[tailOff])),
		head: (*uint64)(unsafe.Pointer(&ctrl[headOff])),
		wake: (*uint32)(unsafe.Pointer(&ctrl[wakeOff])),
		name: name,
	}
}

// producer writes records into a ring (the app→runtime ring A). It is not
// safe for concurrent use: the session serialises writers.
type producer struct {
	ring
	pos       uint64 // our tail: bytes ever published
	headCache uint64
}

// maxRecord is the largest aligned record this ring takes (half its size).
func (p *producer) maxRecord() int { return int(p.size / 2) }

// reserve returns room for one record of aligned length n (writing a
// padding record first when it would not fit before the end), or nil when
// the ring is full. start is the position the record will start at.
func (p *producer) reserve(n int) (buf []byte, start uint64, err error) {
	need := uint64(n)
	idx := p.pos & (p.size - 1)
	toEnd := p.size - idx
	total := need
	if need > toEnd {
		total = toEnd + need
	}
	if p.size-(p.pos-p.headCache) < total {
		head := atomic.LoadUint64(p.head)
		if head < p.headCache || head > p.pos {
			return nil, 0, fmt.Errorf("protocol error: ring %s: head counter %d outside %d..=%d", p.name, head, p.headCache, p.pos)
		}
		p.headCache = head
		if p.size-(p.pos-head) < total {
			return nil, 0, nil
		}
	}
	if need > toEnd {
		le.PutUint32(p.data[idx:], uint32(int32(toEnd)))
		pad := int32(typePadding)
		le.PutUint32(p.data[idx+4:], uint32(pad))
		p.pos += toEnd
		idx = 0
	}
	return p.data[idx : idx+need], p.pos, nil
}

// publish makes the record of aligned length n written into the last
// reserve visible, and reports whether the consumer asked to be woken.
func (p *producer) publish(n int) (wake bool) {
	p.pos += uint64(n)
	atomic.StoreUint64(p.tail, p.pos)
	return atomic.LoadUint32(p.wake) != 0
}

// consumed reports whether the runtime has read past position pos.
func (p *producer) consumed(pos uint64) bool { return atomic.LoadUint64(p.head) > pos }

// consumer reads records from a ring (the runtime→app ring B). The
// session's receive lock guards it.
type consumer struct {
	ring
	pos uint64 // our head: bytes ever consumed
}

// pending reports whether the producer published past our head.
func (c *consumer) pending() bool { return atomic.LoadUint64(c.tail) != c.pos }

// poll hands each message payload published so far to fn (the slice points
// into the ring and is valid only during the call: fn copies what it
// keeps), then releases the space. It returns how many messages it read.
func (c *consumer) poll(fn func(payload []byte)) (int, error) {
	tail := atomic.LoadUint64(c.tail)
	if tail == c.pos {
		return 0, nil
	}
	if tail < c.pos || tail-c.pos > c.size {
		return 0, fmt.Errorf("protocol error: ring %s: tail counter %d outside %d..=%d", c.name, tail, c.pos, c.pos+c.size)
	}
	n := 0
	for c.pos != tail {
		idx := c.pos & (c.size - 1)
		toEnd := c.size - idx
		length := int32(le.Uint32(c.data[idx:]))
		typ := int32(le.Uint32(c.data[idx+4:]))
		if length < recordHdrLen || uint64(length) > toEnd || uint64(length) > tail-c.pos {
			return n, fmt.Errorf("protocol error: ring %s: record at position %d has length %d, outside %d..=%d", c.name, c.pos, length, recordHdrLen, min(toEnd, tail-c.pos))
		}
		switch typ {
		case typePadding:
			if uint64(length) != toEnd {
				return n, fmt.Errorf("protocol error: ring %s: padding at position %d has length %d, not the %d bytes to the end", c.name, c.pos, length, toEnd)
			}
			c.pos += toEnd
		case typeMessage:
			if Align8(int(length)) > int(c.size/2) {
				return n, fmt.Errorf("protocol error: ring %s: record at position %d of %d bytes exceeds half the ring", c.name, c.pos, length)
			}
			fn(c.data[idx+recordHdrLen : idx+uint64(length)])
			c.pos += uint64(Align8(int(length)))
			n++
		default:
			return n, fmt.Errorf("protocol error: ring %s: record at position %d has type %d", c.name, c.pos, typ)
		}
	}
	atomic.StoreUint64(c.head, c.pos)
	return n, nil
}

// setWake stores the consumer's need-wakeup flag (a full fence).
func (c *consumer) setWake(on bool) {
	var v uint32
	if on {
		v = 1
	}
	atomic.StoreUint32(c.wake, v)
}
