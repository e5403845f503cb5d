#ifndef DDP_JPEG_CODEC_H
#define DDP_JPEG_CODEC_H

#include <stddef.h>

/// A decoded 8-bit image: `height` rows of `width` pixels of `channels`
/// (1 grey, 3 RGB) samples; `pixels` is malloc'ed, release it with
/// `ddp_jpeg_free`.
typedef struct {
    int width;
    int height;
    int channels;
    unsigned char *pixels;
} ddp_jpeg_image;

/// Decodes JPEG bytes. Returns 0 on success. On any error or libjpeg warning
/// (corrupt or truncated data, unsupported format, more than `max_pixels`
/// pixels) returns nonzero, writes libjpeg's reason into `message` and leaves
/// `out->pixels` NULL: a bad file never exits or crashes the process.
int ddp_jpeg_decode(const unsigned char *data, size_t size, long max_pixels,
                    ddp_jpeg_image *out, char *message, size_t message_size);

/// Encodes `height` rows of `width` pixels of `channels` (1 or 3) samples as
/// a baseline JPEG of the given quality (1...100). Returns 0 on success with
/// `*out` malloc'ed (release with `ddp_jpeg_free`) and `*out_size` bytes.
int ddp_jpeg_encode(const unsigned char *pixels, int width, int height, int channels, int quality,
                    unsigned char **out, unsigned long *out_size, char *message, size_t message_size);

void ddp_jpeg_free(void *pointer);

#endif
