// libjpeg's default error handler prints and calls exit(); this one records
// the message and jumps back, so a corrupt file is an error for the caller.
#include "jpeg_codec.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char *message;
    size_t message_size;
} strict_error_mgr;

static void record(j_common_ptr cinfo) {
    strict_error_mgr *err = (strict_error_mgr *)cinfo->err;
    if (err->message && err->message_size > 0) {
        char text[JMSG_LENGTH_MAX];
        (*cinfo->err->format_message)(cinfo, text);
        snprintf(err->message, err->message_size, "%s", text);
    }
}

static void fail(j_common_ptr cinfo) {
    record(cinfo);
    longjmp(((strict_error_mgr *)cinfo->err)->jump, 1);
}

// Warnings (level < 0) mean damaged data that libjpeg would paper over, e.g.
// grey rows after a truncated file: treat them as errors. Trace messages
// (level >= 0) are ignored.
static void emit(j_common_ptr cinfo, int level) {
    if (level < 0) fail(cinfo);
}

static void quiet(j_common_ptr cinfo) { (void)cinfo; }

static void install(strict_error_mgr *err, char *message, size_t message_size) {
    jpeg_std_error(&err->base);
    err->base.error_exit = fail;
    err->base.emit_message = emit;
    err->base.output_message = quiet;
    err->message = message;
    err->message_size = message_size;
    if (message && message_size > 0) message[0] = 0;
}

static void say(char *message, size_t message_size, const char *text) {
    if (message && message_size > 0) snprintf(message, message_size, "%s", text);
}

int ddp_jpeg_decode(const unsigned char *data, size_t size, long max_pixels,
                    ddp_jpeg_image *out, char *message, size_t message_size) {
    struct jpeg_decompress_struct cinfo;
    strict_error_mgr err;
    // Written after setjmp and read after longjmp: volatile.
    unsigned char *volatile pixels = NULL;
    out->width = out->height = out->channels = 0;
    out->pixels = NULL;
    if (size == 0) {
        say(message, message_size, "the file is empty");
        return 1;
    }
    install(&err, message, message_size);
    cinfo.err = &err.base;
    if (setjmp(err.jump)) {
        free(pixels);
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);

    int cmyk = 0;
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_CMYK:
    case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; cmyk = 1; break;
    default: cinfo.out_color_space = JCS_RGB; break;
    }
    if ((long)cinfo.image_width * (long)cinfo.image_height > max_pixels) {
        if (message && message_size > 0)
            snprintf(message, message_size, "it claims %ux%u pixels, more than the limit of %ld",
                     cinfo.image_width, cinfo.image_height, max_pixels);
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_start_decompress(&cinfo);
    int width = (int)cinfo.output_width, height = (int)cinfo.output_height;
    int decoded = cinfo.output_components;
    int channels = cmyk ? 3 : decoded;
    pixels = malloc((size_t)width * (size_t)height * (size_t)decoded);
    if (!pixels) {
        say(message, message_size, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * (size_t)width * (size_t)decoded;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    int adobe_inverted = cinfo.saw_Adobe_marker;
    jpeg_destroy_decompress(&cinfo);

    if (cmyk) {
        // (Adobe files store CMYK inverted.) RGB = (1 - C)(1 - K) etc.
        size_t count = (size_t)width * (size_t)height;
        for (size_t i = 0; i < count; i++) {
            unsigned char *p = pixels + 4 * i;
            int c = p[0], m = p[1], y = p[2], k = p[3];
            if (!adobe_inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
            pixels[3 * i + 0] = (unsigned char)((c * k + 127) / 255);
            pixels[3 * i + 1] = (unsigned char)((m * k + 127) / 255);
            pixels[3 * i + 2] = (unsigned char)((y * k + 127) / 255);
        }
    }
    out->width = width;
    out->height = height;
    out->channels = channels;
    out->pixels = pixels;
    return 0;
}

int ddp_jpeg_encode(const unsigned char *pixels, int width, int height, int channels, int quality,
                    unsigned char **out, unsigned long *out_size, char *message, size_t message_size) {
    struct jpeg_compress_struct cinfo;
    strict_error_mgr err;
    // libjpeg grows `target` while compressing; its address is taken, so it
    // lives in memory and is current after a longjmp.
    unsigned char *target = NULL;
    unsigned long size = 0;
    *out = NULL;
    *out_size = 0;
    if (width <= 0 || height <= 0 || (channels != 1 && channels != 3)) {
        say(message, message_size, "invalid image size or channel count");
        return 1;
    }
    install(&err, message, message_size);
    cinfo.err = &err.base;
    if (setjmp(err.jump)) {
        jpeg_destroy_compress(&cinfo);
        free(target);
        return 1;
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, &target, &size);
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = channels;
    cinfo.in_color_space = channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * (size_t)width * (size_t)channels);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    *out = target;
    *out_size = size;
    return 0;
}

void ddp_jpeg_free(void *pointer) { free(pointer); }
