//! A blocking client for keyd's admin socket.

use std::io::ErrorKind as IoErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metacrypt_protocol::{
    ClientMessage, FrameError, Hello, PROTOCOL_VERSION, Request, RequestBody, ResponseBody,
    SealState, ServerMessage, SocketRole, read_frame, write_frame,
};

use crate::error::CliError;

/// How long to wait for one reply. Init and unseal run an Argon2id
/// derivation of 128 MiB in keyd, and keyd runs one at a time, so this
/// leaves room for a queue of derivations.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to keyd's admin socket after the `Hello` exchange.
pub struct AdminClient {
    stream: UnixStream,
    socket: PathBuf,
    state: SealState,
    next_id: u64,
    trace_id: String,
}

impl AdminClient {
    /// Connects to `socket` and exchanges `Hello` with keyd.
    pub fn connect(socket: &Path) -> Result<Self, CliError> {
        let stream = UnixStream::connect(socket).map_err(|err| connect_error(socket, &err))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|err| CliError::io(format!("{}: {err}", socket.display())))?;
        let mut client = Self {
            stream,
            socket: socket.to_path_buf(),
            state: SealState::Uninitialized,
            next_id: 1,
            trace_id: trace_id(),
        };
        client.hello()?;
        Ok(client)
    }

    /// Returns the seal state from keyd's `Hello` reply, updated by any
    /// `StateChanged` message read since.
    pub fn state(&self) -> SealState {
        self.state
    }

    fn hello(&mut self) -> Result<(), CliError> {
        let hello = ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: SocketRole::Admin,
            client: format!("metacrypt {}", env!("CARGO_PKG_VERSION")),
        });
        write_frame(&mut self.stream, &hello).map_err(|err| self.frame_error(err))?;
        loop {
            match self.read()? {
                ServerMessage::Hello(Ok(reply)) => {
                    if reply.role != SocketRole::Admin {
                        return Err(CliError::usage(format!(
                            "{} is keyd's {} socket; the CLI needs the admin socket \
                             (keyd.admin_socket in the config)",
                            self.socket.display(),
                            reply.role
                        )));
                    }
                    self.state = reply.state;
                    return Ok(());
                }
                ServerMessage::Hello(Err(body)) => {
                    return Err(CliError::service(format!(
                        "keyd rejected the connection on {}: {body}",
                        self.socket.display()
                    )));
                }
                ServerMessage::StateChanged(state) => self.state = state,
                ServerMessage::Reply(_) => {
                    return Err(self.protocol_error("a reply before the Hello reply"));
                }
            }
        }
    }

    /// Sends one request and waits for its reply. An error reply from keyd
    /// becomes a [`CliError`] of kind `Service` carrying keyd's message.
    pub fn call(&mut self, body: RequestBody) -> Result<ResponseBody, CliError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = ClientMessage::Request(Request {
            id,
            trace_id: self.trace_id.clone(),
            remote_addr: None,
            caller: None,
            body,
        });
        write_frame(&mut self.stream, &request).map_err(|err| self.frame_error(err))?;
        drop(request);
        loop {
            match self.read()? {
                ServerMessage::Reply(reply) if reply.id == id => {
                    return reply
                        .result
                        .map_err(|body| CliError::service(body.to_string()));
                }
                ServerMessage::Reply(reply) => {
                    return Err(self.protocol_error(&format!(
                        "a reply to request {} while waiting for request {id}",
                        reply.id
                    )));
                }
                ServerMessage::StateChanged(state) => self.state = state,
                ServerMessage::Hello(_) => {
                    return Err(self.protocol_error("a second Hello reply"));
                }
            }
        }
    }

    /// Sends a request whose reply must be a seal state, and returns it.
    pub fn call_for_state(&mut self, body: RequestBody) -> Result<SealState, CliError> {
        let operation = body.operation();
        match self.call(body)? {
            ResponseBody::State(state) => Ok(state),
            other => Err(self.protocol_error(&format!(
                "an unexpected reply to {operation}: {}",
                response_name(&other)
            ))),
        }
    }

    fn read(&mut self) -> Result<ServerMessage, CliError> {
        read_frame(&mut self.stream).map_err(|err| self.frame_error(err))
    }

    fn frame_error(&self, err: FrameError) -> CliError {
        let socket = self.socket.display();
        match err {
            FrameError::Closed => CliError::io(format!("keyd closed the connection on {socket}")),
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset
                ) =>
            {
                CliError::io(format!("keyd closed the connection on {socket}: {io}"))
            }
            FrameError::Io(io)
                if matches!(io.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) =>
            {
                CliError::io(format!(
                    "timed out after {} s waiting for keyd's reply on {socket}",
                    REPLY_TIMEOUT.as_secs()
                ))
            }
            other => CliError::io(format!("keyd connection on {socket} failed: {other}")),
        }
    }

    fn protocol_error(&self, what: &str) -> CliError {
        CliError::io(format!(
            "keyd sent {what} on {}; the CLI and keyd may be different versions",
            self.socket.display()
        ))
    }
}

fn connect_error(socket: &Path, err: &std::io::Error) -> CliError {
    let hint = match err.kind() {
        IoErrorKind::NotFound | IoErrorKind::ConnectionRefused => {
            " (is metacrypt-keyd running? the path comes from --socket or keyd.admin_socket)"
        }
        IoErrorKind::PermissionDenied => " (run as root or as the user metacrypt-keyd runs as)",
        _ => "",
    };
    CliError::io(format!(
        "could not connect to keyd's admin socket {}: {err}{hint}",
        socket.display()
    ))
}

fn response_name(body: &ResponseBody) -> &'static str {
    match body {
        ResponseBody::State(_) => "state",
        ResponseBody::Mounts(_) => "mounts",
        ResponseBody::Mount(_) => "mount",
        ResponseBody::Unmounted => "unmounted",
        ResponseBody::Ca(_) => "ca",
        ResponseBody::PolicyRules(_) => "policy-rules",
        ResponseBody::PolicyRule(_) => "policy-rule",
        ResponseBody::PolicyRuleDeleted => "policy-rule-deleted",
        ResponseBody::DenialRecorded => "denial-recorded",
    }
}

/// Generates a random id that keyd logs with the request, so the CLI call
/// can be found in keyd's log.
fn trace_id() -> String {
    let mut bytes = [0u8; 8];
    // A failed RNG leaves zeros, which only makes the id less unique.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    format!("cli-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    use metacrypt_protocol::{ErrorBody, ErrorCode, HelloReply, Reply};

    use super::*;

    /// Serves one connection on a real Unix socket. It replies to Hello with
    /// `hello`, then sends `before_reply` and the reply made by `answer` for
    /// each request. The thread returns the requests it received.
    fn serve_one(
        socket: &Path,
        hello: Result<HelloReply, ErrorBody>,
        before_reply: Vec<ServerMessage>,
        answer: impl Fn(&Request) -> ServerMessage + Send + 'static,
    ) -> JoinHandle<Vec<Request>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let first: ClientMessage = read_frame(&mut stream).unwrap();
            assert!(matches!(
                first,
                ClientMessage::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    role: SocketRole::Admin,
                    ..
                })
            ));
            let rejected = hello.is_err();
            write_frame(&mut stream, &ServerMessage::Hello(hello)).unwrap();
            let mut seen = Vec::new();
            if rejected {
                return seen;
            }
            while let Ok(ClientMessage::Request(request)) = read_frame(&mut stream) {
                for message in &before_reply {
                    write_frame(&mut stream, message).unwrap();
                }
                write_frame(&mut stream, &answer(&request)).unwrap();
                seen.push(request);
            }
            seen
        })
    }

    fn hello_ok(state: SealState) -> Result<HelloReply, ErrorBody> {
        Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Admin,
            state,
        })
    }

    fn state_reply(request: &Request, state: SealState) -> ServerMessage {
        ServerMessage::Reply(Reply {
            id: request.id,
            result: Ok(ResponseBody::State(state)),
        })
    }

    #[test]
    fn status_returns_reported_state() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let server = serve_one(&socket, hello_ok(SealState::Sealed), vec![], |request| {
            state_reply(request, SealState::Sealed)
        });
        let mut client = AdminClient::connect(&socket).unwrap();
        assert_eq!(client.state(), SealState::Sealed);
        let state = client.call_for_state(RequestBody::Status).unwrap();
        assert_eq!(state, SealState::Sealed);
        drop(client);
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, RequestBody::Status);
        assert!(seen[0].caller.is_none());
        assert!(seen[0].trace_id.starts_with("cli-"));
    }

    #[test]
    fn unseal_sends_password() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let server = serve_one(&socket, hello_ok(SealState::Sealed), vec![], |request| {
            state_reply(request, SealState::Unsealed)
        });
        let mut client = AdminClient::connect(&socket).unwrap();
        let state = client
            .call_for_state(RequestBody::Unseal {
                password: "correct horse battery".into(),
            })
            .unwrap();
        assert_eq!(state, SealState::Unsealed);
        drop(client);
        let seen = server.join().unwrap();
        let RequestBody::Unseal { password } = &seen[0].body else {
            panic!("expected an unseal request, got {:?}", seen[0].body);
        };
        assert_eq!(password.expose(), "correct horse battery");
    }

    #[test]
    fn state_changes_before_reply_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let _server = serve_one(
            &socket,
            hello_ok(SealState::Unsealed),
            vec![ServerMessage::StateChanged(SealState::Sealed)],
            |request| state_reply(request, SealState::Sealed),
        );
        let mut client = AdminClient::connect(&socket).unwrap();
        let state = client.call_for_state(RequestBody::Seal).unwrap();
        assert_eq!(state, SealState::Sealed);
        assert_eq!(client.state(), SealState::Sealed);
    }

    #[test]
    fn error_reply_carries_keyd_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let _server = serve_one(&socket, hello_ok(SealState::Sealed), vec![], |request| {
            ServerMessage::Reply(Reply {
                id: request.id,
                result: Err(ErrorBody::too_many_attempts(42)),
            })
        });
        let mut client = AdminClient::connect(&socket).unwrap();
        let err = client
            .call_for_state(RequestBody::Unseal {
                password: "x".into(),
            })
            .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.message, "too many attempts (retry in 42 s)");
    }

    #[test]
    fn rejected_hello_is_service_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let _server = serve_one(
            &socket,
            Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "protocol version 1 is not supported (keyd speaks 2)",
            )),
            vec![],
            |_| unreachable!(),
        );
        let err = AdminClient::connect(&socket).err().unwrap();
        assert_eq!(err.exit_code(), 1);
        assert!(err.message.contains("keyd speaks 2"), "{}", err.message);
    }

    #[test]
    fn front_socket_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("front.sock");
        let hello = Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Front,
            state: SealState::Sealed,
        });
        let _server = serve_one(&socket, hello, vec![], |_| unreachable!());
        let err = AdminClient::connect(&socket).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("front socket"), "{}", err.message);
    }

    #[test]
    fn reply_with_other_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let _server = serve_one(&socket, hello_ok(SealState::Sealed), vec![], |request| {
            ServerMessage::Reply(Reply {
                id: request.id + 7,
                result: Ok(ResponseBody::State(SealState::Sealed)),
            })
        });
        let mut client = AdminClient::connect(&socket).unwrap();
        let err = client.call(RequestBody::Status).err().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(err.message.contains("request 8"), "{}", err.message);
    }

    #[test]
    fn missing_socket_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let err = AdminClient::connect(&socket).err().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.message.contains(&socket.display().to_string()),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("is metacrypt-keyd running"),
            "{}",
            err.message
        );
    }

    #[test]
    fn closed_connection_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _hello: ClientMessage = read_frame(&mut stream).unwrap();
            drop(stream);
        });
        let err = AdminClient::connect(&socket).err().unwrap();
        server.join().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.message.contains("closed the connection"),
            "{}",
            err.message
        );
    }
}
