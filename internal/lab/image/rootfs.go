package image

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"strings"

	"kubeipam/internal/oci"
)

// Busybox returns the files of a busybox rootfs from a static busybox
// binary (Debian busybox-static: /bin/busybox): /bin/busybox plus one
// symlink per applet of `busybox --list-full` (run the binary to list),
// /etc/passwd (root and nobody), /etc/group, /tmp (1777), /root, /www.
func Busybox(busyboxPath string) ([]File, error) {
	files, err := Static(busyboxPath, "busybox")
	if err != nil {
		return nil, err
	}
	files[0].Path = "/bin/busybox"
	bin := busyboxPath
	if !strings.Contains(bin, "/") {
		bin = "./" + bin // the file read above, not one found in $PATH
	}
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("image: %s --list-full: %w", busyboxPath, err)
	}
	seen := map[string]bool{"/bin/busybox": true}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		p := path.Clean("/" + line)
		if p == "/" || seen[p] {
			continue // Debian's list names bin/busybox itself
		}
		seen[p] = true
		files = append(files, File{Path: p, Mode: fs.ModeSymlink | 0o777, Link: "/bin/busybox"})
	}
	if len(seen) < 2 {
		return nil, fmt.Errorf("image: %s --list-full listed no applets", busyboxPath)
	}
	return append(files,
		File{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		File{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\n")},
		File{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		File{Path: "/root", Mode: fs.ModeDir | 0o700},
		File{Path: "/www", Mode: fs.ModeDir | 0o755},
	), nil
}

// Static returns the files for a single static binary at /<name> (mode 0755).
// A dynamically linked binary, or one for another platform than the lab's,
// is an error: the image has no libc or loader.
func Static(binPath, name string) ([]File, error) {
	if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return nil, fmt.Errorf("image: invalid binary name %q", name)
	}
	f, err := oci.Static(binPath, "/"+name, Platform)
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}
