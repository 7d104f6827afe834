package oci

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path"
)

// elfMachines maps the architectures this package checks binaries for to
// their ELF machine.
var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// Static returns the static binary at binPath as the image file imagePath
// (mode 0755), after checking that it runs on p: a Linux ELF executable
// for p's architecture with no ELF interpreter. A dynamically linked
// binary would fail in an image without libc with a baffling "no such file
// or directory" (its loader is missing); a binary for another architecture
// with "exec format error".
func Static(binPath, imagePath string, p Platform) (File, error) {
	if !path.IsAbs(imagePath) || path.Clean(imagePath) != imagePath || imagePath == "/" {
		return File{}, fmt.Errorf("oci: image path %q for %s is not a clean absolute path below /", imagePath, binPath)
	}
	machine, ok := elfMachines[p.Architecture]
	if p.OS != "linux" || !ok {
		return File{}, fmt.Errorf("oci: %s: platform %s is not supported (linux/amd64 and linux/arm64 are)", binPath, p)
	}
	data, err := os.ReadFile(binPath)
	if err != nil {
		return File{}, fmt.Errorf("oci: %w", err)
	}
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return File{}, fmt.Errorf("oci: %s is not an ELF executable: %w", binPath, err)
	}
	defer ef.Close()
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			return File{}, fmt.Errorf("oci: %s is dynamically linked (it needs an ELF interpreter and the image has none); build it static, e.g. CGO_ENABLED=0", binPath)
		}
	}
	if ef.Machine != machine {
		return File{}, fmt.Errorf("oci: %s is for %v, not %s", binPath, ef.Machine, p)
	}
	return File{Path: imagePath, Mode: 0o755, Data: data}, nil
}
