import Crypto
import Foundation

/// A signed statement of a writer's chain head: because every event hash covers the previous
/// one, a valid signature over the head at `seq` vouches for every event up to it, and a chain
/// that ends before a checkpoint's `seq` was truncated (docs/evidence.md, "Checkpoints").
public struct Checkpoint: Sendable, Equatable, Codable {
    public var writerID: String
    /// The `seq` of the head event it signs.
    public var seq: Int64
    /// That event's hash.
    public var hash: String
    /// When it was signed (``Timestamp`` form).
    public var at: String
    /// Ed25519 public key, 64 lowercase hex digits.
    public var publicKey: String
    /// Ed25519 signature over ``message``, 128 lowercase hex digits.
    public var signature: String

    public init(writerID: String, seq: Int64, hash: String, at: String, publicKey: String, signature: String) {
        self.writerID = writerID
        self.seq = seq
        self.hash = hash
        self.at = at
        self.publicKey = publicKey
        self.signature = signature
    }

    enum CodingKeys: String, CodingKey {
        case writerID = "writer_id", seq, hash, at, publicKey = "public_key", signature
    }

    /// The checkpoint as one canonical JSON line of a bundle's `checkpoints.jsonl`.
    public var line: String {
        let object: CanonicalJSON = [
            "writer_id": .string(writerID), "seq": .int(seq), "hash": .string(hash), "at": .string(at), "public_key": .string(publicKey),
            "signature": .string(signature),
        ]
        return object.text
    }

    /// The signed bytes: five fields joined by line feeds.
    public static func message(writerID: String, seq: Int64, hash: String, at: String) -> [UInt8] {
        Array("custos.checkpoint.v1\n\(writerID)\n\(seq)\n\(hash)\n\(at)".utf8)
    }

    /// Whether the signature verifies under `trustedKey` (hex) and was made by that key.
    public func isValid(trustedKey: String) -> Bool {
        publicKey == trustedKey
            && CheckpointSigner.isValid(signature: signature, over: Self.message(writerID: writerID, seq: seq, hash: hash, at: at), key: trustedKey)
    }
}

/// Signs chain heads with the gateway's Ed25519 key.
public struct CheckpointSigner: Sendable {
    private let key: Curve25519.Signing.PrivateKey
    /// The public key, 64 lowercase hex digits.
    public let publicKey: String

    /// A signer from the 32-byte Ed25519 seed.
    public init(seed: [UInt8]) throws {
        self.key = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        self.publicKey = EventChain.hex(key.publicKey.rawRepresentation)
    }

    /// An Ed25519 signature (hex) over `bytes` (a bundle's manifest).
    public func signature(over bytes: [UInt8]) throws -> String {
        EventChain.hex(try key.signature(for: bytes))
    }

    /// Whether `signature` (hex) is `key`'s (hex) over `bytes`.
    public static func isValid(signature: String, over bytes: [UInt8], key: String) -> Bool {
        guard let keyBytes = Hex.decode(key), let signatureBytes = Hex.decode(signature),
            let publicKey = try? Curve25519.Signing.PublicKey(rawRepresentation: keyBytes)
        else { return false }
        return publicKey.isValidSignature(signatureBytes, for: bytes)
    }

    /// A checkpoint of `head` (the writer's last committed event), signed now.
    public func sign(writerID: String, seq: Int64, hash: String, at: Date = Date()) throws -> Checkpoint {
        let time = Timestamp.format(at)
        let signature = try key.signature(for: Checkpoint.message(writerID: writerID, seq: seq, hash: hash, at: time))
        return Checkpoint(writerID: writerID, seq: seq, hash: hash, at: time, publicKey: publicKey, signature: EventChain.hex(signature))
    }
}

/// Lowercase hex decoding for keys and signatures.
public enum Hex {
    /// The bytes of an even-length hex string, or nil when it is not hex.
    public static func decode(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var index = 0
        while index < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}
