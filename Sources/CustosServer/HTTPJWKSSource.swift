import AsyncHTTPClient
import CustosCore
import Foundation
import NIOCore

/// Fetches JWKS over HTTP(S): discovery at `{issuer}/.well-known/openid-configuration`, then
/// `jwks_uri`. The discovery document must name the same issuer, as OpenID Connect requires.
struct HTTPJWKSSource: JWKSSource {
    let client: HTTPClient

    enum FetchError: Error, CustomStringConvertible {
        case status(String, UInt)
        case badDiscovery(String)

        var description: String {
            switch self {
            case .status(let url, let code): "GET \(url) answered \(code)"
            case .badDiscovery(let why): "discovery document invalid: \(why)"
            }
        }
    }

    func fetchJWKS(for issuer: IssuerSettings) async throws -> [UInt8] {
        let base = issuer.issuer.hasSuffix("/") ? String(issuer.issuer.dropLast()) : issuer.issuer
        let discovery = try await get(base + "/.well-known/openid-configuration")
        guard let document = try JSONSerialization.jsonObject(with: Data(discovery)) as? [String: Any] else {
            throw FetchError.badDiscovery("not a JSON object")
        }
        guard document["issuer"] as? String == issuer.issuer else { throw FetchError.badDiscovery("issuer does not match") }
        guard let jwksURI = document["jwks_uri"] as? String, let url = URL(string: jwksURI), let host = url.host else {
            throw FetchError.badDiscovery("no jwks_uri")
        }
        guard url.scheme == "https" || (url.scheme == "http" && CustosConfig.isLoopback(host)) else {
            throw FetchError.badDiscovery("jwks_uri must be https (or http on loopback)")
        }
        return try await get(jwksURI)
    }

    private func get(_ url: String) async throws -> [UInt8] {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Accept", value: "application/json")
        let response = try await client.execute(request, timeout: .seconds(5))
        guard response.status == .ok else { throw FetchError.status(url, response.status.code) }
        let body = try await response.body.collect(upTo: 1 << 20)
        return Array(body.readableBytesView)
    }
}
