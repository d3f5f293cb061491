package sipmsg

import "bytes"

// CutLine returns the first line of data, without its CRLF or bare LF,
// and the rest: what a message's bytes hold, read as Parse reads them,
// for those who answer from the bytes (what cannot be parsed, responses
// matched without parsing them).
func CutLine(data []byte) (line, rest []byte) {
	line, rest, _ = bytes.Cut(data, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r")), rest
}

// CutHead splits a message's bytes at its first blank line (CRLF CRLF,
// or bare LFs), as Parse does: the head without the ending of its last
// line, and the body.
func CutHead(data []byte) (head, body []byte, found bool) {
	for i := 0; i < len(data); {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			break
		}
		if j == 0 || j == 1 && data[i] == '\r' {
			return bytes.TrimSuffix(bytes.TrimSuffix(data[:i], []byte("\n")), []byte("\r")), data[i+j+1:], true
		}
		i += j + 1
	}
	return nil, nil, false
}
