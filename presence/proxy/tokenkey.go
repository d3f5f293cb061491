package proxy

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TokenKeyFile is the file in the state directory that holds the key of
// the proxy's tokens.
const TokenKeyFile = "proxy-token.key"

// LoadTokenKey returns the key kept in dir, making one the first time
// (mode 0600). A file of the wrong size (damaged) is replaced by a new
// key, which is reported as replaced; a file that cannot be read or
// written is an error.
func LoadTokenKey(dir string) (key []byte, replaced bool, err error) {
	path := filepath.Join(dir, TokenKeyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == 32:
		return b, false, nil
	case err == nil:
		replaced = true
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("proxy token key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, false, err
	}
	if err := SaveTokenKey(dir, key); err != nil {
		return nil, false, err
	}
	return key, replaced, nil
}

// SaveTokenKey keeps key in dir (mode 0600), replacing the file whole: a
// node of a cluster keeps the cluster's key there, so that it has it when
// it starts while the engine is away.
func SaveTokenKey(dir string, key []byte) error {
	if len(key) != 32 {
		return fmt.Errorf("proxy token key: %d bytes, want 32", len(key))
	}
	path := filepath.Join(dir, TokenKeyFile)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, key, 0o600); err != nil {
		return fmt.Errorf("proxy token key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("proxy token key: %w", err)
	}
	return nil
}
