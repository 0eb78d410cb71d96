/*
 * ddc-init: the whole userspace of the guest's initrd.
 *
 * The stock Debian initrd (initramfs-tools: busybox, udev, dozens of hooks)
 * costs seconds under TCG, and all a testbed blade needs from it is the
 * handful of modules that the Debian kernel does not build in: virtio-pci,
 * virtio-blk and ext4 (plus virtio-net and qemu_fw_cfg, which are loaded here
 * too so that the real root finds the NIC and the fw_cfg blobs already there
 * without waiting for udev).  So this program loads the modules the image
 * builder packed into /modules (in file-name order, which the builder made
 * the dependency order), mounts root= and hands over to the real init.
 *
 * Kernel command line understood: root=/dev/XXX (default /dev/vda),
 * rootfstype= (default ext4), ro / rw (default rw), init= (default
 * /sbin/init).  On any failure it says why on the console and exits, which
 * makes the kernel panic with that message just above: a broken image fails
 * loudly and at once instead of hanging a boot-time wait.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MODDIR "/modules"
#define ROOT_WAIT_MS 10000

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("ddc-init: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void load_modules(void)
{
	struct dirent **names;
	int n = scandir(MODDIR, &names, NULL, by_name);

	if (n < 0)
		return; /* an initrd without modules is fine: a kernel with them built in */
	for (int i = 0; i < n; i++) {
		char path[512];
		int fd;

		if (names[i]->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), MODDIR "/%s", names[i]->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open %s: %s", path, strerror(errno));
		/* EEXIST: built into this kernel after all, or already loaded. */
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			die("load %s: %s", path, strerror(errno));
		close(fd);
		/* The initramfs is RAM: give the module file's pages back. */
		unlink(path);
	}
}

/* Copy the value of "key=" from the command line into out; 1 if found. */
static int cmdline_value(const char *cmdline, const char *key, char *out, size_t size)
{
	size_t klen = strlen(key);

	for (const char *p = cmdline; *p;) {
		size_t len = strcspn(p, " \t\n");

		if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			size_t vlen = len - klen - 1;

			if (vlen >= size)
				vlen = size - 1;
			memcpy(out, p + klen + 1, vlen);
			out[vlen] = '\0';
			return 1;
		}
		p += len;
		p += strspn(p, " \t\n");
	}
	return 0;
}

static int cmdline_flag(const char *cmdline, const char *flag)
{
	size_t flen = strlen(flag);

	for (const char *p = cmdline; *p;) {
		size_t len = strcspn(p, " \t\n");

		if (len == flen && strncmp(p, flag, flen) == 0)
			return 1;
		p += len;
		p += strspn(p, " \t\n");
	}
	return 0;
}

int main(void)
{
	char cmdline[4096] = "";
	char root[256] = "/dev/vda", fstype[64] = "ext4", init[256] = "/sbin/init";
	unsigned long flags = 0;
	struct timespec pause = { 0, 2 * 1000 * 1000 };
	int fd, waited_ms = 0;

	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		die("mount /proc: %s", strerror(errno));
	/* devtmpfs is not mounted automatically when booting from an initramfs. */
	if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0)
		die("mount /dev: %s", strerror(errno));
	fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);

		cmdline[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	cmdline_value(cmdline, "root", root, sizeof(root));
	cmdline_value(cmdline, "rootfstype", fstype, sizeof(fstype));
	cmdline_value(cmdline, "init", init, sizeof(init));
	if (cmdline_flag(cmdline, "ro"))
		flags |= MS_RDONLY;

	load_modules();

	/*
	 * virtio-blk registers the disk from its probe, but the device node is
	 * created by devtmpfs asynchronously: poll for it (2 ms steps) instead
	 * of sleeping a fixed time.
	 */
	while (mount(root, "/root", fstype, flags, NULL) != 0) {
		if ((errno != ENOENT && errno != ENXIO) || waited_ms >= ROOT_WAIT_MS)
			die("mount %s (%s) on /root: %s", root, fstype, strerror(errno));
		nanosleep(&pause, NULL);
		waited_ms += 2;
	}

	if (mount("/dev", "/root/dev", NULL, MS_MOVE, NULL) != 0)
		die("move /dev: %s", strerror(errno));
	if (mount("/proc", "/root/proc", NULL, MS_MOVE, NULL) != 0)
		die("move /proc: %s", strerror(errno));
	unlink("/init");
	if (chdir("/root") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0
	    || chdir("/") != 0)
		die("switch to the new root: %s", strerror(errno));
	execl(init, init, (char *)NULL);
	die("exec %s: %s", init, strerror(errno));
	return 1;
}
