/* nbd-protocol.h: every constant of the NBD protocol under the spec's own
 * name, and the wire layouts.  Nothing else lives here.
 *
 * Source: doc/proto.md of the NetworkBlockDevice/nbd project (including the
 * extended-headers extension) and QEMU's docs/interop/nbd.rst for the qemu:
 * metadata contexts.  All integers on the wire are big-endian; the structs
 * below describe byte layouts only and are never cast onto buffers (the codec
 * reads and writes fields one by one), so they carry no packing attributes.
 */
#ifndef NBD_PROTOCOL_H
#define NBD_PROTOCOL_H

#include <stdint.h>

/* ---- Handshake ---------------------------------------------------------- */
#define NBD_MAGIC                 UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_NEW_VERSION           UINT64_C(0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_OLD_VERSION           UINT64_C(0x0000420281861253)
#define NBD_OPT_REPLY_MAGIC       UINT64_C(0x0003e889045565a9)

#define NBD_OLDSTYLE_GREETING_LEN 152 /* magic, magic, size, flags, 124 zeros */
#define NBD_NEWSTYLE_GREETING_LEN 18  /* magic, magic, 16-bit flags */

/* Handshake flags (server, 16 bit). */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
/* Client flags (32 bit). */
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES      NBD_FLAG_NO_ZEROES

/* Options. */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_PEEK_EXPORT       4 /* withdrawn */
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option reply types. */
#define NBD_REP_ACK               1
#define NBD_REP_SERVER            2
#define NBD_REP_INFO              3
#define NBD_REP_META_CONTEXT      4
#define NBD_REP_FLAG_ERROR        (UINT32_C(1) << 31)
#define NBD_REP_ERR_UNSUP         (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY        (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID       (NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_PLATFORM      (NBD_REP_FLAG_ERROR | 4)
#define NBD_REP_ERR_TLS_REQD      (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN       (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN      (NBD_REP_FLAG_ERROR | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8)
#define NBD_REP_ERR_TOO_BIG       (NBD_REP_FLAG_ERROR | 9)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR | 10)

/* Information types for NBD_OPT_INFO / NBD_OPT_GO. */
#define NBD_INFO_EXPORT           0
#define NBD_INFO_NAME             1
#define NBD_INFO_DESCRIPTION      2
#define NBD_INFO_BLOCK_SIZE       3

/* Transmission flags (16 bit). */
#define NBD_FLAG_HAS_FLAGS            (1u << 0)
#define NBD_FLAG_READ_ONLY            (1u << 1)
#define NBD_FLAG_SEND_FLUSH           (1u << 2)
#define NBD_FLAG_SEND_FUA             (1u << 3)
#define NBD_FLAG_ROTATIONAL           (1u << 4)
#define NBD_FLAG_SEND_TRIM            (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES    (1u << 6)
#define NBD_FLAG_SEND_DF              (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN       (1u << 8)
#define NBD_FLAG_SEND_RESIZE          (1u << 9)
#define NBD_FLAG_SEND_CACHE           (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO       (1u << 11)
#define NBD_FLAG_BLOCK_STAT_PAYLOAD   (1u << 12)

/* ---- Transmission ------------------------------------------------------- */
#define NBD_REQUEST_MAGIC         UINT32_C(0x25609513)
#define NBD_EXTENDED_REQUEST_MAGIC UINT32_C(0x21e41c71)
#define NBD_SIMPLE_REPLY_MAGIC    UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)
#define NBD_EXTENDED_REPLY_MAGIC  UINT32_C(0x6e8a278c)

#define NBD_REQUEST_LEN           28
#define NBD_EXTENDED_REQUEST_LEN  32
#define NBD_SIMPLE_REPLY_LEN      16
#define NBD_STRUCTURED_REPLY_LEN  20
#define NBD_EXTENDED_REPLY_LEN    32

/* Commands. */
#define NBD_CMD_READ              0
#define NBD_CMD_WRITE             1
#define NBD_CMD_DISC              2
#define NBD_CMD_FLUSH             3
#define NBD_CMD_TRIM              4
#define NBD_CMD_CACHE             5
#define NBD_CMD_WRITE_ZEROES      6
#define NBD_CMD_BLOCK_STATUS      7
#define NBD_CMD_RESIZE            8

/* Command flags. */
#define NBD_CMD_FLAG_FUA          (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE      (1u << 1)
#define NBD_CMD_FLAG_DF           (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE      (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO    (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN  (1u << 5)

/* Structured reply flags and chunk types. */
#define NBD_REPLY_FLAG_DONE       (1u << 0)
#define NBD_REPLY_TYPE_NONE       0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR_BIT  (1u << 15)
#define NBD_REPLY_TYPE_ERROR      (NBD_REPLY_TYPE_ERROR_BIT | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET (NBD_REPLY_TYPE_ERROR_BIT | 2)

/* Error values on the wire (the same in simple replies and error chunks). */
#define NBD_SUCCESS               0
#define NBD_EPERM                 1
#define NBD_EIO                   5
#define NBD_ENOMEM                12
#define NBD_EINVAL                22
#define NBD_ENOSPC                28
#define NBD_EOVERFLOW             75
#define NBD_ENOTSUP               95
#define NBD_ESHUTDOWN             108

/* ---- Metadata contexts -------------------------------------------------- */
#define NBD_CONTEXT_BASE_ALLOCATION "base:allocation"
#define NBD_STATE_HOLE            (1u << 0)
#define NBD_STATE_ZERO            (1u << 1)
#define NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX "qemu:dirty-bitmap:"
#define NBD_STATE_DIRTY           (1u << 0)
#define NBD_CONTEXT_QEMU_ALLOCATION_DEPTH "qemu:allocation-depth"

/* ---- Limits ------------------------------------------------------------- */
#define NBD_MAX_STRING            4096      /* names, messages, contexts */
#define NBD_DEFAULT_PORT          10809
#define NBD_MAX_BLOCK_STATUS_DESCRIPTORS (1u << 20)

/* ---- Wire layouts (documentation; fields in wire order) ----------------- */
#if 0
struct nbd_new_handshake {        /* 18 bytes */
    uint64_t nbdmagic;            /* NBD_MAGIC */
    uint64_t version;             /* NBD_NEW_VERSION */
    uint16_t gflags;
};
struct nbd_new_option {           /* 16 bytes + data */
    uint64_t version;             /* NBD_NEW_VERSION */
    uint32_t option;
    uint32_t optlen;
};
struct nbd_fixed_new_option_reply { /* 20 bytes + payload */
    uint64_t magic;               /* NBD_OPT_REPLY_MAGIC */
    uint32_t option;
    uint32_t reply;
    uint32_t replylen;
};
struct nbd_export_name_reply {    /* 10 bytes, + 124 zeros without NO_ZEROES */
    uint64_t exportsize;
    uint16_t eflags;
};
struct nbd_request {              /* 28 bytes */
    uint32_t magic;               /* NBD_REQUEST_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t count;
};
struct nbd_extended_request {     /* 32 bytes */
    uint32_t magic;               /* NBD_EXTENDED_REQUEST_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t count;
};
struct nbd_simple_reply {         /* 16 bytes */
    uint32_t magic;               /* NBD_SIMPLE_REPLY_MAGIC */
    uint32_t error;
    uint64_t cookie;
};
struct nbd_structured_reply {     /* 20 bytes */
    uint32_t magic;               /* NBD_STRUCTURED_REPLY_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint32_t length;
};
struct nbd_extended_reply {       /* 32 bytes */
    uint32_t magic;               /* NBD_EXTENDED_REPLY_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t length;
};
struct nbd_block_descriptor_32 { uint32_t length; uint32_t status_flags; };
struct nbd_block_descriptor_ext { uint64_t length; uint64_t status_flags; };
#endif

#endif /* NBD_PROTOCOL_H */
