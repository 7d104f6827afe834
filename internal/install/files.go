package install

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tempPrefix and tempInfix name the temporary files of an atomic write:
// ".<name>.tmp-<random>". The random suffix is the file's extension, so a
// container runtime scanning the conf dir for *.conf, *.conflist and *.json
// never loads a half-written config.
const tempInfix = ".tmp-"

func tempPattern(name string) string { return "." + name + tempInfix + "*" }

// stamp identifies a file's content cheaply between passes: a file whose
// size, modification time, mode and inode are unchanged since it was hashed
// is not read again (the binaries are tens of MiB and the loop runs every
// minute).
type stamp struct {
	size  int64
	mtime time.Time
	mode  fs.FileMode
	ino   uint64
}

func stampOf(fi fs.FileInfo) stamp {
	return stamp{size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode(), ino: inode(fi)}
}

type hashed struct {
	st  stamp
	sum [sha256.Size]byte
}

// hasher hashes files, remembering the result per path while the file's
// stamp is unchanged.
type hasher struct{ seen map[string]hashed }

func newHasher() *hasher { return &hasher{seen: map[string]hashed{}} }

// sum returns the SHA-256 of a regular file (symlinks followed), or
// ok=false when it does not exist.
func (h *hasher) sum(path string) (sum [sha256.Size]byte, fi fs.FileInfo, ok bool, err error) {
	fi, err = os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return sum, nil, false, nil
	}
	if err != nil {
		return sum, nil, false, err
	}
	if !fi.Mode().IsRegular() {
		return sum, fi, false, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	}
	st := stampOf(fi)
	if c, hit := h.seen[path]; hit && c.st == st {
		return c.sum, fi, true, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return sum, nil, false, err
	}
	defer f.Close()
	d := sha256.New()
	if _, err := io.Copy(d, f); err != nil {
		return sum, nil, false, fmt.Errorf("reading %s: %w", path, err)
	}
	copy(sum[:], d.Sum(nil))
	h.seen[path] = hashed{st: st, sum: sum}
	return sum, fi, true, nil
}

// forget drops what is known about path (it was just rewritten).
func (h *hasher) forget(path string) { delete(h.seen, path) }

// syncFile makes dst hold exactly the content of open(), with mode. It does
// nothing when dst already has that content (compared by SHA-256, want) and
// only fixes the mode when just the mode differs. Otherwise the content is
// written to a temporary file in dst's directory, fsynced, given its mode,
// and renamed over dst, and the directory is fsynced: a reader (the
// container runtime executing a plugin, or loading a config) sees the old
// file or the new one, never a partial one. A symlink at dst is replaced by
// a regular file.
func (h *hasher) syncFile(dst string, want [sha256.Size]byte, mode fs.FileMode, open func() (io.ReadCloser, error)) (changed bool, err error) {
	if lfi, err := os.Lstat(dst); err == nil && lfi.Mode().IsRegular() {
		got, fi, ok, err := h.sum(dst)
		if err != nil {
			return false, err
		}
		if ok && got == want {
			if fi.Mode().Perm() == mode.Perm() {
				return false, nil
			}
			if err := os.Chmod(dst, mode.Perm()); err != nil {
				return false, fmt.Errorf("chmod %s: %w", dst, err)
			}
			h.forget(dst)
			return true, nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	src, err := open()
	if err != nil {
		return false, err
	}
	defer src.Close()
	if err := writeAtomic(dst, src, mode); err != nil {
		return false, err
	}
	h.forget(dst)
	return true, nil
}

// syncBytes is syncFile for content held in memory.
func (h *hasher) syncBytes(dst string, data []byte, mode fs.FileMode) (bool, error) {
	return h.syncFile(dst, sha256.Sum256(data), mode, func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// writeAtomic writes r to a temporary file next to dst and renames it over
// dst (see syncFile).
func writeAtomic(dst string, r io.Reader, mode fs.FileMode) (err error) {
	dir, name := filepath.Split(dst)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, tempPattern(name))
	if err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, r); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	// Chmod the descriptor: CreateTemp's 0600 is subject to nothing, and
	// the final mode must not depend on the umask.
	if err = f.Chmod(mode.Perm()); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, dst, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// removeStaleTemps removes temporary files that an interrupted write of one
// of names left in dir. It only ever matches this installer's own pattern.
func removeStaleTemps(dir string, names []string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		for _, n := range names {
			if strings.HasPrefix(e.Name(), "."+n+tempInfix) {
				p := filepath.Join(dir, e.Name())
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return removed, err
				}
				removed = append(removed, p)
				break
			}
		}
	}
	return removed, nil
}

// mkdir creates dir (and parents) with perm if missing; an existing
// directory keeps its mode.
func mkdir(dir string, perm fs.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("creating directory %s: %w", dir, err)
	}
	return nil
}
