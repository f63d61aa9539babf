/*
 * EVFILT_READ / EVFILT_WRITE on files epoll refuses.
 *
 * Regular files cannot be added to epoll.  As on FreeBSD (filt_vfsread),
 * READ is ready while the offset is not at the end, data = size - offset
 * (negative past the end), and a change of the file (an inotify watch,
 * IN_MODIFY) makes it look again; WRITE is always ready with data 0.
 * Directories and devices epoll refuses (no poll method) are always ready,
 * as poll(2) has them.  With EV_CLEAR each of these reports once, then
 * again when its file changes (inotify), a device never.
 *
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_internal.h"

/* Files epoll refuses whose report depends on their changes (a regular
 * file's READ; with EV_CLEAR, a regular file's WRITE and a directory's
 * READ): one inotify instance per queue, created on the first, watching
 * each such file.  mask: IN_MODIFY for a regular file (write, truncate),
 * the entry changes for a directory -- one file is never both, so the
 * registrations sharing a watch (inotify has one per file and instance)
 * agree on it. */
static int files_watch(struct kq *kq, struct knote *kn, uint32_t mask)
{
    if (kq->files_ino_fd < 0) {
        int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        int err = kq_watch_internal(kq, fd, EPOLLIN, EP_DATA(TAG_FILES, 0, 0));
        if (err != 0)
            return err;
        kq->files_ino_fd = fd;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", (int)kn->kev.ident);
    int wd = inotify_add_watch(kq->files_ino_fd, path, mask);
    if (wd < 0)
        return -errno;
    kn->u.fd.wd = wd;
    return 0;
}

static void files_unwatch(struct kq *kq, struct knote *kn)
{
    int wd = kn->u.fd.wd;
    kn->u.fd.wd = -1;
    if (wd < 0)
        return;
    /* inotify gives every registration of one file the same watch. */
    for (struct knote *o = kq->files; o != NULL; o = o->u.fd.next)
        if (o != kn && o->u.fd.wd == wd)
            return;
    inotify_rm_watch(kq->files_ino_fd, wd);
}

/* A registration looks again (a WRITE knote or a directory's has a watch
 * only with EV_CLEAR: reported once more). */
static void files_look_again(struct kq *kq, struct knote *kn)
{
    kn->status |= KN_ACTIVE;
    if (!(kn->status & KN_DISABLED))
        kq_enqueue(kq, kn);
}

/* A watched file changed: its knotes look again. */
static void files_event(struct kq *kq, const struct inotify_event *ev)
{
    for (struct knote *kn = kq->files; kn != NULL; kn = kn->u.fd.next)
        if (kn->u.fd.wd == ev->wd)
            files_look_again(kq, kn);
}

/* Changes were lost (IN_Q_OVERFLOW): every watched registration looks
 * again -- a file that grew meanwhile is reported (filt_vfsread). */
static void files_overflow(struct kq *kq)
{
    for (struct knote *kn = kq->files; kn != NULL; kn = kn->u.fd.next)
        if (kn->u.fd.wd >= 0)
            files_look_again(kq, kn);
}

void fd_files_ready(struct kq *kq)
{
    kq_inotify_drain(kq, kq->files_ino_fd, files_event, files_overflow);
}

/* Start treating kn as a regular file (epoll refused its descriptor). */
int fd_file_attach(struct kq *kq, struct knote *kn)
{
    struct stat st;
    if (fstat((int)kn->kev.ident, &st) < 0)
        return -errno;
    kn->u.fd.kind = FDK_REGULAR;
    kn->u.fd.mode = (uint32_t)(st.st_mode & S_IFMT);
    kn->u.fd.wd = -1;
    uint32_t mask = 0;
    if (S_ISREG(st.st_mode) && (kn->kev.filter == EVFILT_READ || (kn->kev.flags & EV_CLEAR)))
        mask = IN_MODIFY;
    else if (S_ISDIR(st.st_mode) && (kn->kev.flags & EV_CLEAR))
        mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO;
    if (mask != 0) {
        int err = files_watch(kq, kn, mask);
        if (err != 0)
            return err;
    }
    kn->u.fd.next = kq->files;
    kq->files = kn;
    kn->status |= KN_ACTIVE;        /* look once; queued when enabled */
    return 0;
}

void fd_file_detach(struct kq *kq, struct knote *kn)
{
    if (kn->u.fd.kind != FDK_REGULAR)
        return;
    fd_list_remove(&kq->files, kn);
    files_unwatch(kq, kn);
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->status &= ~KN_ACTIVE;
}

/* Regular files, from the pending list.  As FreeBSD's filt_vfsread: READ
 * is ready while the offset is not at the end of the file (data = size -
 * offset, negative past the end); WRITE is always ready, data 0
 * (filt_vfswrite); directories and devices without poll are always ready.
 * EV_CLEAR, as FreeBSD's kqueue_scan() does, takes a reported knote off
 * until the file next changes (its inotify watch; a device: never, until
 * the registration is changed). */
int fd_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    int fd = (int)kn->kev.ident;
    struct stat st;
    if (kn->u.fd.kind != FDK_REGULAR) {
        kn->status &= ~KN_ACTIVE;
        return 0;
    }
    if (kq_life_check(kq, fd) != 0 || fstat(fd, &st) < 0) {
        /* Closed, or the number names another file now: the registration
         * died with its descriptor. */
        kn->status |= KN_STALE;
        return 0;
    }
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ && !S_ISREG(st.st_mode)) {
        /* A directory, or a device epoll cannot watch (no poll method):
         * always ready, as poll(2) says; data the bytes before the size. */
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos >= 0 && st.st_size > pos)
            out->data = (intptr_t)(st.st_size - pos);
        if (kn->kev.flags & EV_CLEAR)
            kn->status &= ~KN_ACTIVE;   /* a directory: again when it changes */
    } else if (kn->kev.filter == EVFILT_READ) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos < 0 || st.st_size == pos) {
            kn->status &= ~KN_ACTIVE;   /* quiet until the file changes */
            return 0;
        }
        out->data = (intptr_t)(st.st_size - pos);
        if (kn->kev.flags & EV_CLEAR)
            kn->status &= ~KN_ACTIVE;   /* again on the next change */
    } else if (kn->kev.flags & EV_CLEAR) {
        kn->status &= ~KN_ACTIVE;       /* WRITE: again when the file changes */
    }
    return 1;
}
