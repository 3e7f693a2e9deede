/*
 * postcopy's one native helper, for the two system calls Node does not offer:
 *
 * 1. madvise(MADV_HUGEPAGE): back a range of guest RAM with transparent huge
 *    pages, as QEMU does for the anonymous RAM of a guest. Without this addon
 *    (no C compiler at install time) guest RAM simply stays on 4 KiB pages.
 * 2. dup(): a second descriptor of a socket, so that a worker thread can read
 *    the main channel's bulk stream (src/destination/bulk/) while the main
 *    thread keeps its own descriptor for the return path. Without it the bulk
 *    stream is read on the main thread.
 *
 * advise(view: Uint8Array) -> { address, length }: the 2 MiB-aligned interior
 * of the view that was advised (length 0 when the view holds no whole huge
 * page). Throws with errno's text when madvise fails.
 * address(view: Uint8Array) -> number: where the view's first byte lives (for
 * tests that look the mapping up in /proc/self/smaps).
 * dup(fd: number) -> number: a new close-on-exec descriptor of the same open
 * file. Throws with errno's text when fcntl fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define HUGE_PAGE ((uintptr_t)2 << 20)

static napi_value throw_error(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

/* The bytes of the Uint8Array argument; false (with an exception) otherwise. */
static bool view_arg(napi_env env, napi_callback_info info, void **data, size_t *length) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_typed = false;
  napi_typedarray_type type;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_is_typedarray(env, argv[0], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[0], &type, length, data, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "expected a Uint8Array");
    return false;
  }
  return true;
}

static napi_value address(napi_env env, napi_callback_info info) {
  void *data;
  size_t length;
  if (!view_arg(env, info, &data, &length)) return NULL;
  napi_value out;
  napi_create_double(env, (double)(uintptr_t)data, &out);
  return out;
}

static napi_value advise(napi_env env, napi_callback_info info) {
  void *data;
  size_t length;
  if (!view_arg(env, info, &data, &length)) return NULL;
  uintptr_t start = ((uintptr_t)data + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  uintptr_t end = ((uintptr_t)data + length) & ~(HUGE_PAGE - 1);
  if (end < start) end = start;
  if (end > start && madvise((void *)start, end - start, MADV_HUGEPAGE) != 0) {
    return throw_error(env, strerror(errno));
  }
  napi_value out, address, len;
  napi_create_object(env, &out);
  napi_create_double(env, (double)start, &address);
  napi_create_double(env, (double)(end - start), &len);
  napi_set_named_property(env, out, "address", address);
  napi_set_named_property(env, out, "length", len);
  return out;
}

static napi_value dup_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "expected a file descriptor");
    return NULL;
  }
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return throw_error(env, strerror(errno));
  napi_value out;
  napi_create_int32(env, copy, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "advise", NAPI_AUTO_LENGTH, advise, NULL, &fn);
  napi_set_named_property(env, exports, "advise", fn);
  napi_create_function(env, "address", NAPI_AUTO_LENGTH, address, NULL, &fn);
  napi_set_named_property(env, exports, "address", fn);
  napi_create_function(env, "dup", NAPI_AUTO_LENGTH, dup_fd, NULL, &fn);
  napi_set_named_property(env, exports, "dup", fn);
  return exports;
}
