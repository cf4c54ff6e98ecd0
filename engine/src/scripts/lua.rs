//! A Lua script and one call of it. EVALSHA first; when Redis answers NOSCRIPT (a
//! `SCRIPT FLUSH`, a restart, a failover to a node that never ran it) the same call
//! goes again as EVAL with the script's text, which runs it and caches it in one step.
//! (The client's own reload sends `SCRIPT LOAD` and then EVALSHA: a flush landing
//! between the two failed the call.) NOSCRIPT means the script did not run, so sending
//! the call again changes nothing twice.

use redis::{
    aio::ConnectionLike, Arg, Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, ToRedisArgs,
};

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
        ScriptInvocation { script: self, keys: Cmd::new(), args: Cmd::new() }
    }
}

/// One call of a [`Script`]: `KEYS` and `ARGV` in order, each list one flat buffer (a
/// batch of orders has ten or more of them per order: none is an allocation of its own).
pub struct ScriptInvocation<'a> {
    script: &'a Script,
    keys: Cmd,
    args: Cmd,
}

impl std::fmt::Debug for ScriptInvocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments may carry user data: only their counts.
        f.debug_struct("ScriptInvocation")
            .field("script", &self.script.hash)
            .field("keys", &self.keys.args_iter().len())
            .field("args", &self.args.args_iter().len())
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
        match self.evalsha().query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.code.as_bytes()).query_async(con).await
            }
            other => other,
        }
    }

    /// The call as first sent: `EVALSHA <sha> <number of keys> KEYS... ARGV...`.
    pub fn evalsha(&self) -> Cmd {
        self.command("EVALSHA", self.script.hash.as_bytes())
    }

    fn command(&self, verb: &str, script: &[u8]) -> Cmd {
        let (keys, args) = (self.keys.args_iter(), self.args.args_iter());
        let bytes: usize =
            keys.clone().chain(args.clone()).map(|a| if let Arg::Simple(b) = a { b.len() } else { 0 }).sum();
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), 64 + script.len() + bytes);
        cmd.arg(verb).arg(script).arg(keys.len());
        for arg in keys.chain(args) {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}
