package procscan

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The helpers below take paths as NUL-terminated byte slices the caller
// builds in a reused buffer (or points into a getdents buffer), so that a
// walk over thousands of processes and fds allocates nothing per entry:
// the string-taking wrappers in x/sys/unix copy every path to the heap.

// openDir opens the directory path (NUL-terminated) relative to dirfd.
func openDir(dirfd int, path []byte) (int, error) {
	return openat(dirfd, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
}

func openat(dirfd int, path []byte, flags int) (int, error) {
	if len(path) == 0 || path[len(path)-1] != 0 {
		return -1, unix.EINVAL
	}
	fd, _, e := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&path[0])), uintptr(flags), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// openRoot opens a directory named by an ordinary string; it runs once per
// walk.
func openRoot(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

func closeFD(fd int) { _ = unix.Close(fd) }

// readDirents fills buf with linux_dirent64 records from the directory fd;
// 0 means the end of the directory.
func readDirents(fd int, buf []byte) (int, error) {
	return unix.Getdents(fd, buf)
}

// readlinkAt reads the target of the symlink name (NUL-terminated) in dirfd
// into buf.
func readlinkAt(dirfd int, name []byte, buf []byte) (int, error) {
	if len(name) == 0 || name[len(name)-1] != 0 || len(buf) == 0 {
		return 0, unix.EINVAL
	}
	n, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// statAt returns the identity of the file path (NUL-terminated, relative to
// dirfd) resolves to, following symlinks — for /proc/PID/ns/net, the nsfs
// inode of the namespace. statx is the same system call with the same
// structure on every Linux architecture.
func statAt(dirfd int, path []byte) (fileID, error) {
	if len(path) == 0 || path[len(path)-1] != 0 {
		return fileID{}, unix.EINVAL
	}
	var st unix.Statx_t
	_, _, e := unix.Syscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(&path[0])),
		uintptr(unix.AT_STATX_SYNC_AS_STAT), uintptr(unix.STATX_INO), uintptr(unsafe.Pointer(&st)), 0)
	if e != 0 {
		return fileID{}, e
	}
	return fileID{dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino}, nil
}

// readAt reads up to len(buf) bytes of the file path (NUL-terminated,
// relative to dirfd). Files under /proc/PID that fit in buf arrive whole in
// one read.
func readAt(dirfd int, path []byte, buf []byte) (int, error) {
	fd, err := openat(dirfd, path, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return 0, err
	}
	defer closeFD(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// denied reports whether err means we may not look (EACCES, EPERM), as
// opposed to the process having gone.
func denied(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)
}
