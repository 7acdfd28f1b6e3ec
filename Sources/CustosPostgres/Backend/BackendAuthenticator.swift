import Crypto
import CryptoExtras
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// The gateway's side of backend authentication (SCRAM-SHA-256, md5, cleartext) as a value-type
/// state machine: feed it the server's Authentication requests, send what it returns.
public struct BackendAuthenticator {
    /// Why authentication cannot go on.
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case unsupportedMethod(String)
        case protocolViolation(String)
        case serverSignatureMismatch

        public var description: String {
            switch self {
            case .unsupportedMethod(let method): "backend asked for an unsupported authentication method: \(method)"
            case .protocolViolation(let detail): "backend SCRAM exchange invalid: \(detail)"
            case .serverSignatureMismatch: "backend SCRAM server signature does not match (wrong server?)"
            }
        }
    }

    /// What to do after a server message.
    public enum Step: Equatable {
        /// Send this message to the backend.
        case send(FrontendMessage)
        /// Nothing to send; wait for the next message.
        case wait
        /// Authentication is complete.
        case done
    }

    private let user: String
    private let password: String
    /// The SCRAM `n=` attribute; PostgreSQL ignores it (the startup user counts), so it is empty.
    private let scramUser: String
    private var scram: ScramState?

    private struct ScramState {
        var clientNonce: String
        var clientFirstBare: String
        var expectedServerSignature: [UInt8]?
    }

    public init(user: String, password: String, scramUser: String = "") {
        self.user = user
        self.password = password
        self.scramUser = scramUser
    }

    /// The answer to one Authentication request from the server.
    public mutating func handle(_ request: BackendMessage.Authentication, nonce: () -> String = ScramCrypto.makeNonce) throws(Failure) -> Step {
        switch request {
        case .ok:
            if let scram, scram.expectedServerSignature != nil { throw .protocolViolation("no server-final message") }
            return .done
        case .cleartextPassword:
            return .send(.password(Self.cString(password)))
        case .md5Password(let salt):
            let inner = ScramCrypto.md5Hex(Array((password + user).utf8))
            let outer = "md5" + ScramCrypto.md5Hex(Array(inner.utf8) + salt)
            return .send(.password(Self.cString(outer)))
        case .sasl(let mechanisms):
            guard mechanisms.contains("SCRAM-SHA-256") else { throw .unsupportedMethod(mechanisms.joined(separator: ",")) }
            let clientNonce = nonce()
            let bare = "n=\(scramUser),r=\(clientNonce)"
            scram = ScramState(clientNonce: clientNonce, clientFirstBare: bare)
            var body = ByteBuffer()
            body.writeCString("SCRAM-SHA-256")
            let first = "n,," + bare
            body.writeInteger(Int32(first.utf8.count))
            body.writeString(first)
            return .send(.password(body))
        case .saslContinue(let data):
            guard var state = scram else { throw .protocolViolation("continue before start") }
            let serverFirst = String(buffer: data)
            let fields = Self.fields(serverFirst)
            guard let serverNonce = fields["r"], serverNonce.hasPrefix(state.clientNonce), serverNonce.count > state.clientNonce.count,
                let saltText = fields["s"], let salt = Data(base64Encoded: saltText),
                let iterationsText = fields["i"], let iterations = Int(iterationsText), iterations > 0, iterations <= 10_000_000
            else { throw .protocolViolation("bad server-first message") }
            let salted = ScramCrypto.saltedPassword(password: password, salt: Array(salt), iterations: iterations)
            let clientKey = ScramCrypto.hmac(key: salted, Array("Client Key".utf8))
            let storedKey = Array(SHA256.hash(data: clientKey))
            let withoutProof = "c=biws,r=\(serverNonce)"
            let authMessage = Array("\(state.clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
            let signature = ScramCrypto.hmac(key: storedKey, authMessage)
            let proof = zip(clientKey, signature).map { $0 ^ $1 }
            let serverKey = ScramCrypto.hmac(key: salted, Array("Server Key".utf8))
            state.expectedServerSignature = ScramCrypto.hmac(key: serverKey, authMessage)
            scram = state
            return .send(.password(ByteBuffer(string: "\(withoutProof),p=\(Data(proof).base64EncodedString())")))
        case .saslFinal(let data):
            guard var state = scram, let expected = state.expectedServerSignature else { throw .protocolViolation("final before continue") }
            let fields = Self.fields(String(buffer: data))
            guard let verifier = fields["v"], let signature = Data(base64Encoded: verifier) else {
                throw .protocolViolation(fields["e"].map { "server error \($0)" } ?? "bad server-final message")
            }
            guard Array(signature) == expected else { throw .serverSignatureMismatch }
            state.expectedServerSignature = nil
            scram = state
            return .wait
        case .kerberosV5, .gss, .gssContinue, .sspi:
            throw .unsupportedMethod("\(request)")
        }
    }

    private static func cString(_ text: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeCString(text)
        return buffer
    }

    private static func fields(_ message: String) -> [String: String] {
        var result: [String: String] = [:]
        for part in message.split(separator: ",") {
            guard let equals = part.firstIndex(of: "=") else { continue }
            result[String(part[..<equals])] = String(part[part.index(after: equals)...])
        }
        return result
    }
}

/// The hashing behind SCRAM and md5, with the salted password cached: PBKDF2 is the dominant
/// cost of a new backend connection and its inputs (password, salt, iterations) rarely change.
@usableFromInline
enum ScramCrypto {
    private static let cache = NIOLockedValueBox<[CacheKey: [UInt8]]>([:])

    private struct CacheKey: Hashable {
        var password: String
        var salt: [UInt8]
        var iterations: Int
    }

    static func saltedPassword(password: String, salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = CacheKey(password: password, salt: salt, iterations: iterations)
        if let cached = cache.withLockedValue({ $0[key] }) { return cached }
        // Iteration counts come from the server and may be below CryptoExtras' 210k default floor.
        let derived = try! KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32, unsafeUncheckedRounds: iterations)
        let bytes = derived.withUnsafeBytes { Array($0) }
        cache.withLockedValue { cache in
            if cache.count > 64 { cache.removeAll() }
            cache[key] = bytes
        }
        return bytes
    }

    static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    static func md5Hex(_ bytes: [UInt8]) -> String {
        Insecure.MD5.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    @usableFromInline
    static func makeNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<18).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return Data(bytes).base64EncodedString()
    }
}
