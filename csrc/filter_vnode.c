/*
 * EVFILT_VNODE: ident is an open descriptor of a file or directory;
 * fflags says which changes to report (NOTE_DELETE, NOTE_WRITE,
 * NOTE_EXTEND, NOTE_ATTRIB, NOTE_LINK, NOTE_RENAME, NOTE_REVOKE).  The
 * event's fflags are the requested changes seen since the last report.
 * As on BSD, without EV_CLEAR (or EV_DISPATCH) they stay set and the
 * event is reported again on every call; EV_CLEAR is the normal usage.
 *
 * One inotify instance per queue, for all its VNODE registrations, in the
 * queue's epoll set (libkqueue spends an instance per watch, and the
 * per-user limit on instances is 128 by default; watches are limited
 * only by fs.inotify.max_user_watches).  It is created on the first
 * VNODE registration, after the user's descriptor was checked to be open:
 * so the new descriptor cannot take that number.  A queue with no VNODE
 * registration holds no instance, but each queue that has one holds one,
 * so at most max_user_instances queues can watch files at once.
 *
 * The watch is added on /proc/self/fd/N, which names the very file the
 * descriptor refers to (even renamed or unlinked), not a path that may
 * have changed.  inotify gives one watch (wd) per file per instance, so
 * several registrations (several descriptors of one file) may share a
 * wd; they are chained in a small hash on wd.
 *
 * Mapping (inotify -> kqueue):
 *   IN_MODIFY                 NOTE_WRITE, and NOTE_EXTEND if st_size grew
 *                             (one hint, as FreeBSD's VOP_WRITE_POST: a
 *                             registration asking for either gets both)
 *   IN_ATTRIB                 NOTE_ATTRIB if mode/owner/mtime changed;
 *                             NOTE_LINK if st_nlink changed, NOTE_DELETE
 *                             if it dropped (unlink(), rename over it)
 *   IN_DELETE_SELF            NOTE_DELETE
 *   IN_MOVE_SELF              NOTE_RENAME
 *   entry created / deleted / moved in a directory
 *                             NOTE_WRITE, and NOTE_LINK for subdirectories
 *                             (one hint, as FreeBSD's vop_mkdir_post)
 *   IN_UNMOUNT                NOTE_REVOKE, with EV_EOF | EV_ONESHOT
 *   IN_Q_OVERFLOW (events lost)  every registration: NOTE_WRITE |
 *                             NOTE_ATTRIB plus what fstat shows
 *   IN_DELETE of a subdirectory  the cue to fstat the watched directories:
 *                             one with st_nlink 0 was removed, NOTE_DELETE
 *   order                     as FreeBSD's vop_remove_post: an unlink's
 *                             directory NOTE_WRITE before the file's
 *                             NOTE_DELETE (inotify has them the other way)
 * Limits: rmdir() of a watched directory is seen only through its
 * parent's watch in the same queue (inotify sends IN_DELETE_SELF only once
 * the last reference goes, and the registration's descriptor is one; no
 * IN_ATTRIB comes for it); when the last link of a file is removed the
 * kernel may drop the watch, and later writes through a still-open
 * descriptor are not reported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_internal.h"

#define VN_MASK (IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | \
                 IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
#define VN_ENTRY (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
#define NOTE_VNODE_ALL (NOTE_DELETE | NOTE_WRITE | NOTE_EXTEND | NOTE_ATTRIB | \
                        NOTE_LINK | NOTE_RENAME | NOTE_REVOKE)

/* ---- the queue's inotify instance ------------------------------------ */

static int inotify_ensure(struct kq *kq)
{
    if (kq->inotify_fd >= 0)
        return 0;
    struct knote **buckets = calloc(KQ_VN_BUCKETS, sizeof *buckets);
    if (buckets == NULL)
        return -ENOMEM;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int err = kq_watch_internal(kq, fd, EPOLLIN, EP_DATA(TAG_VNODE, 0, 0));
    if (err) {
        free(buckets);
        return err;
    }
    kq->inotify_fd = fd;
    kq->vn_buckets = buckets;
    return 0;
}

static struct knote **bucket_of(struct kq *kq, int wd)
{
    return &kq->vn_buckets[(unsigned)wd % KQ_VN_BUCKETS];
}

static void wd_link(struct kq *kq, struct knote *kn)
{
    struct knote **b = bucket_of(kq, kn->u.vnode.wd);
    kn->u.vnode.next = *b;
    *b = kn;
}

static void wd_unlink(struct kq *kq, struct knote *kn)
{
    if (kn->u.vnode.wd < 0)
        return;
    struct knote **pp = bucket_of(kq, kn->u.vnode.wd);
    while (*pp != NULL && *pp != kn)
        pp = &(*pp)->u.vnode.next;
    if (*pp != NULL)
        *pp = kn->u.vnode.next;
    kn->u.vnode.next = NULL;
}

static int wd_in_use(struct kq *kq, int wd)
{
    for (struct knote *kn = *bucket_of(kq, wd); kn != NULL; kn = kn->u.vnode.next)
        if (kn->u.vnode.wd == wd)
            return 1;
    return 0;
}

/* Stop watching: remove the inotify watch if no other knote shares it. */
static void unwatch(struct kq *kq, struct knote *kn)
{
    int wd = kn->u.vnode.wd;
    if (wd < 0)
        return;
    wd_unlink(kq, kn);
    kn->u.vnode.wd = -1;
    if (!wd_in_use(kq, wd))
        inotify_rm_watch(kq->inotify_fd, wd);
}

/* ---- file state -------------------------------------------------------- */

/* A file kqueue can watch: not a socket, pipe, or anonymous inode. */
static int watchable(const struct stat *st)
{
    return S_ISREG(st->st_mode) || S_ISDIR(st->st_mode) || S_ISCHR(st->st_mode) ||
           S_ISBLK(st->st_mode) || S_ISLNK(st->st_mode);
}

static uint64_t attr_stamp(const struct stat *st)
{
    uint64_t h = st->st_mode;
    h = h * 1000003u ^ st->st_uid;
    h = h * 1000003u ^ st->st_gid;
    h = h * 1000003u ^ (uint64_t)st->st_mtim.tv_sec;
    h = h * 1000003u ^ (uint64_t)st->st_mtim.tv_nsec;
    return h;
}

static void remember(struct knote *kn, const struct stat *st)
{
    kn->u.vnode.dev = st->st_dev;
    kn->u.vnode.ino = st->st_ino;
    kn->u.vnode.size = st->st_size;
    kn->u.vnode.nlink = st->st_nlink;
    kn->u.vnode.stamp = attr_stamp(st);
    kn->u.vnode.isdir = S_ISDIR(st->st_mode);
    kn->u.vnode.qseq = 0;
    kn->kev.data = 0;
}

/* fstat the knote's descriptor; 0 if it no longer names the watched file
 * (closed, or the number reused), which makes the event stale. */
static int vnode_stat(const struct knote *kn, struct stat *st)
{
    return fstat((int)kn->kev.ident, st) == 0 && st->st_dev == kn->u.vnode.dev &&
           st->st_ino == kn->u.vnode.ino;
}

/* Start watching the file the descriptor names.  Returns 0 or errno. */
static int watch(struct kq *kq, struct knote *kn, const struct stat *st)
{
    char path[sizeof "/proc/self/fd/" + 12];
    snprintf(path, sizeof path, "/proc/self/fd/%d", (int)kn->kev.ident);
    int wd = inotify_add_watch(kq->inotify_fd, path, VN_MASK);
    if (wd < 0)
        return -errno;
    kn->u.vnode.wd = wd;
    remember(kn, st);
    wd_link(kq, kn);
    return 0;
}

/* ---- the filter ------------------------------------------------------ */

static int vnode_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    struct stat st;
    kn->u.vnode.wd = -1;
    if (kev->ident > INT_MAX || fstat((int)kev->ident, &st) < 0)
        return -EBADF;
    if (!watchable(&st))
        return -EINVAL;
    /* Only now, with the user's descriptor known open, may a new
     * descriptor be made: it cannot take the user's number. */
    int err = inotify_ensure(kq);
    if (err)
        return err;
    /* The registration lives as long as its descriptor (lifetime.c). */
    if ((err = kq_life_claim(kq, (int)kev->ident, 0)) != 0)
        return err;
    kn->kev.fflags = kev->fflags;
    kn->u.vnode.fired = 0;
    if ((err = watch(kq, kn, &st)) != 0)
        kq_life_unclaim(kq, (int)kev->ident);
    return err;
}

static int vnode_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    /* As on FreeBSD, every change sets the fflags to watch, and changes
     * already seen stay to be reported. */
    kn->kev.fflags = kev->fflags;
    if (!(kev->flags & EV_ADD))
        return 0;
    /* Re-adding (the core found the number still naming the registered
     * file: lifetime.c): if the kernel dropped the watch, start over. */
    struct stat st;
    if (fstat((int)kn->kev.ident, &st) < 0) {
        kn->status |= KN_STALE;
        return -EBADF;
    }
    if (!watchable(&st)) {
        kn->status |= KN_STALE;
        return -EINVAL;
    }
    if (kn->u.vnode.wd >= 0 && st.st_dev == kn->u.vnode.dev && st.st_ino == kn->u.vnode.ino)
        return 0;
    unwatch(kq, kn);
    kn->u.vnode.fired = 0;
    kn->status &= ~KN_ACTIVE;
    kq_dequeue(kq, kn);
    int err = watch(kq, kn, &st);
    if (err != 0)
        kn->status |= KN_STALE;
    return err;
}

static void vnode_detach(struct kq *kq, struct knote *kn)
{
    unwatch(kq, kn);
    kq_life_unclaim(kq, (int)kn->kev.ident);
}

/* Record changes on a knote; queue it if it has something to say.
 * notes are independent changes, each kept only if asked for.  group is
 * one change FreeBSD reports as a single hint (a write: NOTE_WRITE, plus
 * NOTE_EXTEND when it grew the file; a directory entry: NOTE_WRITE, plus
 * NOTE_LINK for a subdirectory): as in FreeBSD's filt_vfsvnode(), when any
 * of its bits was asked for, all of them are reported. */
static void vnode_fire(struct kq *kq, struct knote *kn, uint32_t notes, uint32_t group)
{
    uint32_t asked = kn->kev.fflags & NOTE_VNODE_ALL;
    kn->u.vnode.fired |= notes & asked;
    if (group & asked)
        kn->u.vnode.fired |= group;
    if (kn->u.vnode.fired == 0 && !(kn->kev.flags & EV_EOF))
        return;
    kn->status |= KN_ACTIVE;
    if (!(kn->status & KN_DISABLED))
        kq_enqueue(kq, kn);
}

/* What fstat shows changed since last time: NOTE_EXTEND, NOTE_LINK,
 * NOTE_DELETE, NOTE_ATTRIB (the last only when attr is set). */
static uint32_t stat_changes(struct knote *kn, const struct stat *st, int attr)
{
    uint32_t notes = 0;
    if (st->st_size > kn->u.vnode.size)
        notes |= NOTE_EXTEND;
    if (st->st_nlink != kn->u.vnode.nlink) {
        notes |= NOTE_LINK;
        if (st->st_nlink < kn->u.vnode.nlink)
            notes |= NOTE_DELETE;       /* unlink(), or renamed over */
    }
    uint64_t stamp = attr_stamp(st);
    if (attr && (stamp != kn->u.vnode.stamp || !(notes & NOTE_LINK)))
        notes |= NOTE_ATTRIB;           /* not just the link count */
    kn->u.vnode.size = st->st_size;
    kn->u.vnode.nlink = st->st_nlink;
    kn->u.vnode.stamp = stamp;
    return notes;
}

/* One inotify event for one knote. */
static void vnode_event(struct kq *kq, struct knote *kn, const struct inotify_event *ev)
{
    uint32_t m = ev->mask, notes = 0, group = 0;
    if (ev->len > 0) {
        /* About an entry of a watched directory: only the directory's
         * own contents changing concerns it, not the entry's data. */
        if (m & VN_ENTRY)
            group |= NOTE_WRITE;
        if ((m & VN_ENTRY) && (m & IN_ISDIR))
            group |= NOTE_LINK;         /* a subdirectory's ".." link */
        vnode_fire(kq, kn, 0, group);
        return;
    }
    if (m & (IN_MODIFY | IN_ATTRIB)) {
        struct stat st;
        if (!vnode_stat(kn, &st))
            return;                     /* stale: descriptor closed */
        notes |= stat_changes(kn, &st, (m & IN_ATTRIB) != 0);
        if (m & IN_MODIFY) {
            /* One write, one hint: NOTE_WRITE | NOTE_EXTEND if it grew. */
            group = NOTE_WRITE | (notes & NOTE_EXTEND);
            notes &= ~(uint32_t)NOTE_EXTEND;
        }
    }
    if (m & IN_DELETE_SELF)
        notes |= NOTE_DELETE;
    if (m & IN_MOVE_SELF)
        notes |= NOTE_RENAME;
    if (m & IN_UNMOUNT) {
        notes |= NOTE_REVOKE;
        kn->kev.flags |= EV_EOF | EV_ONESHOT;   /* as FreeBSD on revoke */
    }
    int was_queued = (kn->status & KN_QUEUED) != 0;
    vnode_fire(kq, kn, notes, group);
    if ((notes & NOTE_DELETE) && !was_queued && (kn->status & KN_QUEUED))
        kn->u.vnode.qseq = kq->vn_seq;  /* an unlink: see vnode_dispatch */
}

/* Events were lost: tell every registration something may have changed. */
static void vnode_overflow(struct kq *kq)
{
    for (size_t b = 0; b < KQ_VN_BUCKETS; b++) {
        for (struct knote *kn = kq->vn_buckets[b]; kn != NULL; kn = kn->u.vnode.next) {
            struct stat st;
            uint32_t notes = NOTE_WRITE | NOTE_ATTRIB;
            if (vnode_stat(kn, &st))
                notes |= stat_changes(kn, &st, 1);
            vnode_fire(kq, kn, notes, 0);
        }
    }
}

/* The kernel dropped a watch (file deleted, unmounted, removed). */
static void vnode_ignored(struct kq *kq, int wd)
{
    struct knote **pp = bucket_of(kq, wd);
    while (*pp != NULL) {
        struct knote *kn = *pp;
        if (kn->u.vnode.wd == wd) {
            *pp = kn->u.vnode.next;
            kn->u.vnode.next = NULL;
            kn->u.vnode.wd = -1;
        } else {
            pp = &kn->u.vnode.next;
        }
    }
}

/* A directory lost a subdirectory (rmdir): inotify says nothing to the
 * removed directory's own watch while a descriptor (the registration's
 * own) keeps it open, so look at the directories this queue watches on
 * that file system: one whose link count fell to 0 was removed
 * (vop_rmdir_post: NOTE_DELETE, after the parent's NOTE_WRITE|NOTE_LINK). */
static void vnode_rmdir_cue(struct kq *kq, uint64_t dev)
{
    for (size_t b = 0; b < KQ_VN_BUCKETS; b++) {
        for (struct knote *kn = kq->vn_buckets[b]; kn != NULL; kn = kn->u.vnode.next) {
            struct stat st;
            if (!kn->u.vnode.isdir || kn->u.vnode.dev != dev || kn->u.vnode.nlink == 0 ||
                !vnode_stat(kn, &st) || st.st_nlink != 0)
                continue;
            (void)stat_changes(kn, &st, 0);
            vnode_fire(kq, kn, NOTE_DELETE, 0);
        }
    }
}

/* Is the file kn watches the entry `name` just removed from the directory
 * open as dirfd?  The unlinked name of a descriptor reads back (its
 * /proc/self/fd link) as the directory's path, the name and " (deleted)". */
static int removed_from(const struct knote *kn, int dirfd, const char *name)
{
    static const char deleted[] = " (deleted)";
    char link[sizeof "/proc/self/fd/" + 12], dir[PATH_MAX], file[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t dl = readlink(link, dir, sizeof dir - 1);
    snprintf(link, sizeof link, "/proc/self/fd/%d", (int)kn->kev.ident);
    ssize_t fl = readlink(link, file, sizeof file - 1);
    if (dl <= 0 || fl <= 0)
        return 0;
    size_t dirlen = (size_t)dl == 1 && dir[0] == '/' ? 0 : (size_t)dl;   /* "/" + name */
    size_t namelen = strlen(name), flen = (size_t)fl;
    return flen == dirlen + 1 + namelen + sizeof deleted - 1 &&
           memcmp(file, dir, dirlen) == 0 && file[dirlen] == '/' &&
           memcmp(file + dirlen + 1, name, namelen) == 0 &&
           memcmp(file + dirlen + 1 + namelen, deleted, sizeof deleted - 1) == 0;
}

/* The registrations an unlink's link-count drop queued at the previous
 * inotify event: the tail of the pending list.  inotify reports the
 * file's change (IN_ATTRIB) before its directory's entry removal
 * (IN_DELETE); FreeBSD's vop_remove_post activates the directory first.
 * Those whose file was that very entry are taken off (at most `cap`) and
 * put back after the directory. */
static int lift_unlinked(struct kq *kq, int dirfd, const char *name, struct knote **lifted,
                         int cap)
{
    int n = 0;
    uint32_t prev = kq->vn_seq - 1;
    if (prev == 0)
        return 0;
    for (struct knote *kn = kq_pending_before(kq, NULL); kn != NULL && n < cap;
         kn = kq_pending_before(kq, kn)) {
        if (kn->kev.filter != EVFILT_VNODE || kn->u.vnode.qseq != prev)
            break;
        if (!removed_from(kn, dirfd, name))
            break;
        lifted[n++] = kn;
    }
    for (int i = n - 1; i >= 0; i--)    /* oldest first */
        kq_dequeue(kq, lifted[i]);
    return n;
}

static void vnode_dispatch(struct kq *kq, const struct inotify_event *ev)
{
    struct knote *lifted[16];
    int nlifted = 0;
    uint64_t dev = 0;
    int rmdir_cue = 0;
    if (++kq->vn_seq == 0)
        kq->vn_seq = 1;                 /* 0 marks no queueing link drop */
    if (ev->len > 0 && (ev->mask & IN_DELETE)) {
        for (struct knote *kn = *bucket_of(kq, ev->wd); kn != NULL; kn = kn->u.vnode.next) {
            if (kn->u.vnode.wd == ev->wd) {     /* the directory, by any descriptor */
                nlifted = lift_unlinked(kq, (int)kn->kev.ident, ev->name, lifted,
                                        (int)(sizeof lifted / sizeof lifted[0]));
                break;
            }
        }
    }
    for (struct knote *kn = *bucket_of(kq, ev->wd); kn != NULL; kn = kn->u.vnode.next) {
        if (kn->u.vnode.wd == ev->wd) {
            vnode_event(kq, kn, ev);
            dev = kn->u.vnode.dev;
            rmdir_cue = kn->u.vnode.isdir && ev->len > 0 &&
                        (ev->mask & (IN_DELETE | IN_ISDIR)) == (IN_DELETE | IN_ISDIR);
        }
    }
    if (rmdir_cue)
        vnode_rmdir_cue(kq, dev);
    for (int i = nlifted - 1; i >= 0; i--)
        kq_enqueue(kq, lifted[i]);
    if (ev->mask & IN_IGNORED)
        vnode_ignored(kq, ev->wd);
}

/* Read an inotify instance dry.  The kernel queues at most
 * fs.inotify.max_queued_events events per instance; past that it drops
 * them and queues one IN_Q_OVERFLOW (wd -1): what changed meanwhile is
 * unknown, so every registration the instance serves must look again.
 * One mechanism for VNODE and for the regular files' READ/WRITE. */
void kq_inotify_drain(struct kq *kq, int fd,
                      void (*on_event)(struct kq *, const struct inotify_event *),
                      void (*on_overflow)(struct kq *))
{
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t len = read(fd, buf, sizeof buf);
        if (len <= 0)
            return;     /* EAGAIN: drained */
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW)
                on_overflow(kq);
            else
                on_event(kq, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

/* inotify_fd is readable: read and dispatch everything.  Lock held. */
static int vnode_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                       int room)
{
    (void)data;
    (void)revents;
    (void)out;
    (void)room;
    kq_inotify_drain(kq, kq->inotify_fd, vnode_dispatch, vnode_overflow);
    return 0;
}

static int vnode_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    if (kn->u.vnode.fired == 0 && !(kn->kev.flags & EV_EOF)) {
        kn->status &= ~KN_ACTIVE;
        return 0;
    }
    if (kq_life_check(kq, (int)kn->kev.ident) != 0) {
        /* Its descriptor was closed, or names another file now: the
         * registration died with it (lifetime.c). */
        kn->status |= KN_STALE;
        return 0;
    }
    *out = kn->kev;
    out->fflags = kn->u.vnode.fired;
    out->data = 0;
    /* As on FreeBSD, EV_CLEAR and EV_DISPATCH reset the state. */
    if (kn->kev.flags & (EV_CLEAR | EV_DISPATCH)) {
        kn->u.vnode.fired = 0;
        kn->status &= ~KN_ACTIVE;
    }
    return 1;
}

static void vnode_init(struct kq *kq)
{
    kq->inotify_fd = -1;
}

static void vnode_close_fds(struct kq *kq)
{
    if (kq->inotify_fd >= 0)
        close(kq->inotify_fd);
    kq->inotify_fd = -1;
}

static void vnode_destroy(struct kq *kq)
{
    free(kq->vn_buckets);
    kq->vn_buckets = NULL;
}

const struct filter_ops kq_vnode_ops = {
    .filter = EVFILT_VNODE,
    .tag = TAG_VNODE,
    .flags = FILT_IDENT_FD | FILT_NEEDS_WAKE | FILT_READY_BATCH,
    .init = vnode_init,
    .close_fds = vnode_close_fds,
    .destroy = vnode_destroy,
    .attach = vnode_attach,
    .modify = vnode_modify,
    .detach = vnode_detach,
    .deliver = vnode_deliver,
    .ready = vnode_ready,
};
