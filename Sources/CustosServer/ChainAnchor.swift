import CustosCore
import Foundation

/// The last checkpoint a gateway signed, kept beside its signing key, outside the store: on
/// restart the store must still hold it, so that deleting checkpoints and rewriting the events
/// behind them while the gateway was down is caught before the gateway would sign the result.
/// Whoever can rewrite this file can also read the signing key; off-host copies of the public
/// key and of the checkpoint log lines are the stronger anchor (docs/evidence.md).
enum ChainAnchor {
    /// The anchor of `writerID` under `publicKey`, if the file holds one (another writer's or
    /// another key's anchor, after a rotation, is no anchor).
    static func read(path: String, writerID: String, publicKey: String) -> (seq: Int64, hash: String)? {
        guard let data = FileManager.default.contents(atPath: path),
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
            object["writer_id"] as? String == writerID, object["public_key"] as? String == publicKey,
            let seq = (object["seq"] as? NSNumber)?.int64Value, let hash = object["hash"] as? String
        else { return nil }
        return (seq, hash)
    }

    /// Replaces the anchor with `checkpoint` (written whole, then renamed into place).
    static func write(_ checkpoint: Checkpoint, path: String) throws {
        let object: CanonicalJSON = [
            "writer_id": .string(checkpoint.writerID), "seq": .int(checkpoint.seq), "hash": .string(checkpoint.hash),
            "public_key": .string(checkpoint.publicKey), "at": .string(checkpoint.at),
        ]
        let temporary = path + ".tmp"
        try Data((object.text + "\n").utf8).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }
}
