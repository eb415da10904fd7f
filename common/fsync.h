/* common/fsync.h: making a directory entry durable. */
#ifndef COMMON_FSYNC_H
#define COMMON_FSYNC_H

/* fsync(2) of a directory: 0, or -1 with errno (no error_set: callers
 * decide whether it matters). */
int fsync_dir(const char *dir);
/* fsync of the directory that holds path (after a rename into it). */
int fsync_parent(const char *path);

#endif
