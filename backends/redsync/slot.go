package redsync

import (
	"strconv"
	"strings"
	"sync"
)

// Redis Cluster hashing, so that each lock key's fence counter lives in
// the key's own slot (a script may only touch keys of one slot).

const numSlots = 16384

// crc16 is CRC-16/XMODEM, the checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keySlot returns key's cluster slot, honouring a {hash tag}.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key)) % numSlots
}

var (
	slotTagsOnce sync.Once
	slotTags     []string
)

// slotTag returns a short string whose slot is slot, so that "…{tag}…"
// lands in it.
func slotTag(slot int) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, numSlots)
		left := numSlots
		for i := 0; left > 0; i++ {
			t := strconv.Itoa(i)
			if s := int(crc16(t)) % numSlots; slotTags[s] == "" {
				slotTags[s] = t
				left--
			}
		}
	})
	return slotTags[slot]
}
