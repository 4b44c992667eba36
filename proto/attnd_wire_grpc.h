/* attnd_wire input from a gRPC byte buffer: its slices as the segments of
 * an attnd_wire_in, read in place (no flattening copy). Header-only glue
 * for the two rooms that speak gRPC (service/, client/lib/); the codec
 * itself knows no transport. */
#ifndef ATTND_WIRE_GRPC_H
#define ATTND_WIRE_GRPC_H

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "attnd_wire.h"

static inline attnd_wire_seg attnd_wire_grpc_slice(const void *ctx, size_t i)
{
    const grpc_slice *s = &((const grpc_byte_buffer *)ctx)->data.raw.slice_buffer.slices[i];
    attnd_wire_seg seg = {GRPC_SLICE_START_PTR(*s), GRPC_SLICE_LENGTH(*s)};
    return seg;
}

/* The slices of bb, which must outlive *in. -1 when bb is compressed (its
 * bytes are not the message until decompressed: read it with a
 * grpc_byte_buffer_reader instead). */
static inline int attnd_wire_in_grpc(attnd_wire_in *in, const grpc_byte_buffer *bb)
{
    if (bb->type != GRPC_BB_RAW || bb->data.raw.compression != GRPC_COMPRESS_NONE)
        return -1;
    attnd_wire_in_fn(in, attnd_wire_grpc_slice, bb, bb->data.raw.slice_buffer.count);
    return 0;
}

#endif /* ATTND_WIRE_GRPC_H */
