// The one error class of the ffi layer: a native library that cannot be found or loaded, or a
// call that returned an error code, with the library's own words for it.

export class FfiError extends Error {
  override name = "FfiError";

  constructor(
    message: string,
    /** The library's name ("cudart", "nccl", …). */
    readonly library: string,
    /** The return code, where a call failed. */
    readonly code?: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A C string returned by a library (an error string, a version), or "" for NULL. */
export function cString(pointer: Deno.PointerValue): string {
  return pointer === null ? "" : Deno.UnsafePointerView.getCString(pointer);
}

/** A buffer that a C function writes one pointer-sized out value into (`T** out`). */
export function outPointer(): BigUint64Array<ArrayBuffer> {
  return new BigUint64Array(1);
}

/** A NUL-terminated copy of `text` for a `const char*` parameter. */
export function cText(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`${text}\0`) as Uint8Array<ArrayBuffer>;
}
