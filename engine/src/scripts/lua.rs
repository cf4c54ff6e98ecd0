//! A Lua script and one call of it. EVALSHA first; when Redis answers NOSCRIPT (a
//! `SCRIPT FLUSH`, a restart, a failover to a node that never ran it) the same call
//! goes again as EVAL with the script's text, which runs it and caches it in one step.
//! (The client's own reload sends `SCRIPT LOAD` and then EVALSHA: a flush landing
//! between the two failed the call.) NOSCRIPT means the script did not run, so sending
//! the call again changes nothing twice.

use redis::{aio::ConnectionLike, Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, ToRedisArgs};

/// One script: its text and its SHA1.
#[derive(Debug, Clone)]
pub struct Script {
    code: &'static str,
    hash: String,
}

impl Script {
    pub fn new(code: &'static str) -> Self {
        Self { code, hash: redis::Script::new(code).get_hash().to_owned() }
    }

    pub fn get_hash(&self) -> &str {
        &self.hash
    }

    /// A call of this script, to be given its keys and arguments.
    pub fn prepare_invoke(&self) -> ScriptInvocation<'_> {
        ScriptInvocation { script: self, keys: Vec::new(), args: Vec::new() }
    }
}

/// One call of a [`Script`]: `KEYS` and `ARGV` in order.
pub struct ScriptInvocation<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ScriptInvocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments may carry user data: only their counts.
        f.debug_struct("ScriptInvocation")
            .field("script", &self.script.hash)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .finish()
    }
}

impl<'a> ScriptInvocation<'a> {
    /// Adds `KEYS[n]`.
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds `ARGV[n]`.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Runs the call: EVALSHA, or EVAL with the text when Redis does not have it.
    pub async fn invoke_async<T: FromRedisValue>(&self, con: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.command("EVALSHA", self.script.hash.as_bytes()).query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.code.as_bytes()).query_async(con).await
            }
            other => other,
        }
    }

    fn command(&self, verb: &str, script: &[u8]) -> Cmd {
        let mut cmd = Cmd::new();
        cmd.arg(verb).arg(script).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}
