/**
 * Memory of received gRPC messages. grpc-js assembles each message larger
 * than Node's buffer pool slot into a buffer of its own (the 5-byte gRPC
 * frame header, a field header, then the data) and keeps no reference once
 * it has handed the message over; a decoded `bytes` field is a view into
 * that buffer.
 *
 * @module
 */

/**
 * Releases the buffer of a received message whose `data` field (a view
 * ending the message) has been copied out, if the message had a buffer of
 * its own: its memory is freed now instead of at a later collection, which
 * under a steady stream of uploads came far too late.
 */
export function releaseReceivedMessage(data: Uint8Array): void {
  const buffer = data.buffer;
  if (
    buffer instanceof ArrayBuffer && !buffer.detached && buffer.byteLength > 8192 &&
    data.byteOffset <= 16 && data.byteOffset + data.byteLength === buffer.byteLength
  ) {
    buffer.transfer(0);
  }
}
