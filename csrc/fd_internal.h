/*
 * What the files of EVFILT_READ / EVFILT_WRITE share (filter_fd.c,
 * fd_files.c, fd_data.c, fd_lowat.c).  Lock held everywhere.
 */
#ifndef FD_INTERNAL_H
#define FD_INTERNAL_H

#include "kq_internal.h"

/* filter_fd.c */
int fd_kind_of(const struct knote *kn);                  /* its sub-sets: 0 READ, 1 WRITE */
struct epoll_event fd_wanted(const struct knote *kn);    /* the item for its state */
void fd_list_remove(struct knote **head, struct knote *kn);   /* u.fd.next chains */

/* fd_files.c: files epoll refuses */
int fd_file_attach(struct kq *kq, struct knote *kn);
void fd_file_detach(struct kq *kq, struct knote *kn);
void fd_files_ready(struct kq *kq);
int fd_deliver(struct kq *kq, struct knote *kn, struct kevent *out);

/* fd_data.c: data and EV_EOF */
enum fd_kind fd_learn_kind(int fd);
intptr_t fd_read_data(struct knote *kn, int fd);
intptr_t fd_write_data(struct knote *kn, int fd);
int fd_send_shut_down(struct knote *kn, int fd);
int fd_read_may_reach(struct knote *kn, int fd, intptr_t mark);
int fd_is_socket(const struct knote *kn);

/* fd_lowat.c: WRITE below NOTE_LOWAT */
void fd_lowat_wait(struct kq *kq, struct knote *kn);
void fd_lowat_unwait(struct kq *kq, struct knote *kn);
int fd_write_polled(const struct kq *kq);
int64_t fd_write_next_look(struct kq *kq, int64_t now);

#endif /* FD_INTERNAL_H */
