/* agent/keys.h (agent internal): an encrypted repository's keys
 * (agent/keys.c), as agent/repo.c and agent/remote.c use them. */
#ifndef AGENT_KEYS_H
#define AGENT_KEYS_H

#include <stddef.h>

struct agent_repo;
struct crypt_keys;
struct store;

/* The repo row / config field "encryption": what says a repository is
 * encrypted and which master key is its (malloc'ed JSON). */
char *keys_descriptor(const char *repo_id, const struct crypt_keys *k);
/* A new master key for repository repo_id, kept in key_file (created) or
 * in a first key slot under the source's passphrase; returns the
 * descriptor to record, or NULL. */
char *keys_create(struct store *st, const char *dir, const char *repo_id, const char *key_file);
int keys_add_slot(struct store *st, const char *repo_id, const struct crypt_keys *k, const char *pass,
                  size_t plen, const char *label, char slot_id[17]);
/* The master key of the repository the descriptor describes, from the key
 * source (agent_set_key_source), into r->keys; sets r->encrypted.  Without
 * a key and with the source optional, r->keys stays NULL. */
int keys_load(struct agent_repo *r, const char *descriptor);
void keys_free(struct agent_repo *r);

#endif
