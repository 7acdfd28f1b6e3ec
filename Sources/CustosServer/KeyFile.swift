import CustosCore
import Crypto
import Foundation

/// A gateway secret kept in a file: 32 random bytes written as 64 hex characters. Created with
/// mode 0600 when missing; refused when others may read it. Its contents never reach a log.
enum KeyFile {
    /// The key at `path`, creating it first if it does not exist; `created` says whether it did.
    static func load(path: String, key configKey: String) throws(ConfigError) -> (key: SymmetricKey, created: Bool) {
        let manager = FileManager.default
        var created = false
        if !manager.fileExists(atPath: path) {
            let bytes = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
            let hex = bytes.map { String(format: "%02x", $0) }.joined() + "\n"
            do {
                try manager.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path, withIntermediateDirectories: true)
            } catch {
                throw ConfigError(key: configKey, problem: "cannot create the folder of \(path)")
            }
            // Created with 0600 from the start: the secret is never readable by others, not even briefly.
            let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard descriptor >= 0 else { throw ConfigError(key: configKey, problem: "cannot create \(path)") }
            let written = hex.utf8CString.withUnsafeBytes { write(descriptor, $0.baseAddress, hex.utf8.count) }
            close(descriptor)
            guard written == hex.utf8.count else { throw ConfigError(key: configKey, problem: "cannot write \(path)") }
            created = true
        }
        guard let attributes = try? manager.attributesOfItem(atPath: path), let mode = (attributes[.posixPermissions] as? NSNumber)?.intValue else {
            throw ConfigError(key: configKey, problem: "cannot read \(path)")
        }
        // Someone else's file (planted in a shared folder) would be a key they know.
        if attributes[.type] as? FileAttributeType == .typeSymbolicLink {
            throw ConfigError(key: configKey, problem: "\(path) is a symbolic link; name the key file itself")
        }
        if let owner = (attributes[.ownerAccountID] as? NSNumber)?.uint32Value, owner != geteuid() {
            throw ConfigError(key: configKey, problem: "\(path) belongs to another user (uid \(owner)); the key must be the gateway's own")
        }
        if mode & 0o077 != 0 {
            throw ConfigError(key: configKey, problem: "\(path) is readable by others (mode \(String(mode, radix: 8))); chmod 600 it")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(key: configKey, problem: "cannot read \(path)")
        }
        let hex = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard hex.count == 64, let bytes = Hex.decode(hex) else {
            throw ConfigError(key: configKey, problem: "\(path) does not hold a key (expected 64 hex characters)")
        }
        return (SymmetricKey(data: bytes), created)
    }
}
