import ArgumentParser
import CustosServer
import Foundation
import Logging
import ServiceLifecycle

/// `custos serve`: runs the gateway until SIGTERM or SIGINT.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the gateway.")

    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config = try options.load()
        let level = Logger.Level(rawValue: config.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "custos")
        let gateway: Gateway
        do {
            gateway = try Gateway(config: config, configPath: options.path, logger: logger)
        } catch {
            throw CLIError("\(options.path): \(error)")
        }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: gateway)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
