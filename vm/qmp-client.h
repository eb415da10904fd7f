/* vm/qmp-client.h (vm/ internal): a QMP client.
 *
 * One connection to a QEMU monitor socket: the greeting, capabilities
 * negotiation, commands matched with their replies by id, and the
 * asynchronous events that arrive in between kept in a queue for
 * qmp_wait_event.  Every wait is bounded by the connection's timeout.
 * Errors: NULL / -1 with common/error.h's message ("QMP block-export-add:
 * GenericError: ...", "QEMU closed the QMP connection").
 */
#ifndef VM_QMP_CLIENT_H
#define VM_QMP_CLIENT_H

#include <json-c/json.h>

struct qmp;

struct qmp *qmp_connect(const char *path, int timeout_ms);
void qmp_close(struct qmp *q);

/* Runs cmd with args (taken over; NULL for none).  Returns its "return"
 * value (the caller puts it), or NULL with the error. */
struct json_object *qmp_exec(struct qmp *q, const char *cmd, struct json_object *args);
/* The same, for commands whose return value is not needed: 0 or -1. */
int qmp_run(struct qmp *q, const char *cmd, struct json_object *args);

/* Waits for event `name` whose data has key == value (key NULL: any),
 * taking it from the queue first.  Returns the event's data (the caller
 * puts it) or NULL (ETIMEDOUT, or the connection's error). */
struct json_object *qmp_wait_event(struct qmp *q, const char *name, const char *key,
                                   const char *value, int timeout_ms);

/* Drops the queued events that qmp_wait_event(name, key, value) would
 * take: before a command whose event is awaited, so that one of an earlier
 * job of the same id is not taken for its. */
void qmp_drop_events(struct qmp *q, const char *name, const char *key, const char *value);

/* A json-c object from "k1", v1, "k2", v2, ..., NULL (values taken over). */
struct json_object *qmp_args(const char *key, ...);
/* obj[key] as a string, or NULL. */
const char *qmp_str(struct json_object *obj, const char *key);

#endif
