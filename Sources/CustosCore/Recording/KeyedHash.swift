import COpenSSL
import Crypto

/// HMAC-SHA256 with the key's pads absorbed once, on OpenSSL's stack-allocated SHA-256 context:
/// a MAC costs two hash finalizations and no allocation. Used per value by the `hash` masking
/// strategy and per result by the digests, where swift-crypto's digests would allocate a context
/// for every copy of a keyed state.
public struct KeyedHash: @unchecked Sendable {
    // Plain C structs, never mutated after init: copies are independent.
    private let inner: SHA256_CTX
    private let outer: SHA256_CTX

    public init(key: SymmetricKey) {
        var block = [UInt8](repeating: 0, count: 64)
        key.withUnsafeBytes { bytes in
            if bytes.count > 64 {
                for (index, byte) in SHA256.hash(data: bytes).enumerated() { block[index] = byte }
            } else {
                for (index, byte) in bytes.enumerated() { block[index] = byte }
            }
        }
        var inner = SHA256_CTX()
        var outer = SHA256_CTX()
        SHA256_Init(&inner)
        SHA256_Init(&outer)
        let innerPad = block.map { $0 ^ 0x36 }
        let outerPad = block.map { $0 ^ 0x5c }
        SHA256_Update(&inner, innerPad, 64)
        SHA256_Update(&outer, outerPad, 64)
        self.inner = inner
        self.outer = outer
    }

    /// A MAC being computed over data given in pieces.
    public struct Running: @unchecked Sendable {
        var context: SHA256_CTX

        public mutating func update(_ data: UnsafeRawBufferPointer) {
            guard let base = data.baseAddress, data.count > 0 else { return }
            SHA256_Update(&context, base, data.count)
        }

        public mutating func update(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { update($0) }
        }
    }

    public func start() -> Running {
        Running(context: inner)
    }

    /// The MAC of what `running` was given, into `out` (32 bytes).
    public func finish(_ running: Running, into out: UnsafeMutablePointer<UInt8>) {
        var context = running.context
        SHA256_Final(out, &context)
        var outer = self.outer
        SHA256_Update(&outer, out, 32)
        SHA256_Final(out, &outer)
    }

    /// The MAC of `data`, into `out` (32 bytes).
    public func mac(_ data: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>) {
        var running = start()
        running.update(data)
        finish(running, into: out)
    }

    /// The MAC of what `running` was given, as lowercase hex.
    public func finishHex(_ running: Running) -> String {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buffer in
            finish(running, into: buffer.baseAddress!)
            return EventChain.hex(UnsafeRawBufferPointer(buffer))
        }
    }

    /// SHA-256 of `data` (unkeyed), into `out` (32 bytes).
    static func sha256(_ data: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>) {
        var context = SHA256_CTX()
        SHA256_Init(&context)
        if let base = data.baseAddress, data.count > 0 { SHA256_Update(&context, base, data.count) }
        SHA256_Final(out, &context)
    }
}
