//! Dubbo URLs: `protocol://[user[:password]@]host[:port][/path][?k=v&…]`.
//!
//! Parameters are kept sorted by key and written in that order, as Dubbo's
//! `URL.toFullString()` writes them (a `TreeMap`); values are trimmed and
//! written raw. Dubbo does not escape parameter values inside a URL, so a
//! key may not hold `&`, `=`, `?` or `#` and a value may not hold `&` or
//! `#` (they would split the URL when it is read back): building such a
//! URL is an error naming the parameter.
//!
//! In ZooKeeper, Dubbo escapes with Java's `URLEncoder` (UTF-8, form
//! style): letters, digits and `.-*_` stay, a space becomes `+`, every
//! other byte `%XX` (upper-case hex). The provider node's name is the
//! *whole* URL escaped that way ([`encode_component`]), and the interface
//! is escaped the same way in the path `/dubbo/<interface>/providers`.
//! [`DubboUrl::parse`] accepts a URL as written; [`DubboUrl::from_node_name`]
//! one escaped as a node name.

use std::collections::BTreeMap;
use std::fmt;

/// Why a URL cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `protocol://…`.
    #[error("Dubbo URL '{url}' has no protocol (expected protocol://host:port/path)")]
    NoProtocol {
        /// The input.
        url: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("Dubbo URL '{url}' has an invalid port '{port}'")]
    BadPort {
        /// The input.
        url: String,
        /// The port text.
        port: String,
    },
    /// A `%` escape that is not two hex digits, or bytes that are not UTF-8.
    #[error("'{text}' is not a valid URL-escaped UTF-8 string: {reason}")]
    BadEscape {
        /// The input.
        text: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A parameter that cannot be written into a Dubbo URL.
    #[error("URL parameter '{key}': {reason}")]
    BadParameter {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A component that cannot be written into a Dubbo URL.
    #[error("URL {field} '{value}': {reason}")]
    BadComponent {
        /// Which part (host, protocol, path).
        field: &'static str,
        /// The value.
        value: String,
        /// What was wrong.
        reason: &'static str,
    },
}

/// A Dubbo URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DubboUrl {
    protocol: String,
    username: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
    params: BTreeMap<String, String>,
}

fn check_param(key: &str, value: &str) -> Result<(), UrlError> {
    let bad = |reason: String| UrlError::BadParameter {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("the key is empty".into()));
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '&' | '=' | '?' | '#') || c.is_control() || c.is_whitespace())
    {
        return Err(bad(format!("the key holds {c:?}")));
    }
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '&' | '#') || c.is_control())
    {
        return Err(bad(format!(
            "the value '{value}' holds {c:?}, which Dubbo URLs cannot carry"
        )));
    }
    Ok(())
}

impl DubboUrl {
    /// A URL without parameters. `host` may be an IPv6 literal (without
    /// brackets); `path` is written after a `/` (without one).
    pub fn new(
        protocol: &str,
        host: &str,
        port: Option<u16>,
        path: &str,
    ) -> Result<DubboUrl, UrlError> {
        if protocol.is_empty()
            || !protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(UrlError::BadComponent {
                field: "protocol",
                value: protocol.into(),
                reason: "must be letters, digits, '+', '-' or '.'",
            });
        }
        if host.is_empty()
            || host
                .chars()
                .any(|c| matches!(c, '/' | '?' | '&' | '@' | '#' | '[' | ']') || c.is_whitespace())
        {
            return Err(UrlError::BadComponent {
                field: "host",
                value: host.into(),
                reason: "must be a non-empty host name or IP address",
            });
        }
        if path.starts_with('/')
            || path
                .chars()
                .any(|c| matches!(c, '?' | '#' | '&') || c.is_whitespace())
        {
            return Err(UrlError::BadComponent {
                field: "path",
                value: path.into(),
                reason: "must not start with '/' nor hold '?', '#', '&' or spaces",
            });
        }
        if port == Some(0) {
            return Err(UrlError::BadComponent {
                field: "port",
                value: "0".into(),
                reason: "must be from 1 to 65535 (or absent)",
            });
        }
        Ok(DubboUrl {
            protocol: protocol.into(),
            username: None,
            password: None,
            host: host.into(),
            port,
            path: path.into(),
            params: BTreeMap::new(),
        })
    }

    /// Sets parameter `key` (replacing it); the value is trimmed.
    pub fn set_param(&mut self, key: &str, value: &str) -> Result<&mut Self, UrlError> {
        let value = value.trim();
        check_param(key, value)?;
        self.params.insert(key.into(), value.into());
        Ok(self)
    }

    /// Builder form of [`Self::set_param`].
    pub fn with_param(mut self, key: &str, value: &str) -> Result<Self, UrlError> {
        self.set_param(key, value)?;
        Ok(self)
    }

    /// Removes parameter `key`, returning its value.
    pub fn remove_param(&mut self, key: &str) -> Option<String> {
        self.params.remove(key)
    }

    /// Protocol (`dubbo`, `consumer`, …).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Host (an IPv6 literal without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port, if the URL has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Path (without the leading `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// User name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// All parameters, sorted by key.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The service interface: parameter `interface`, else the path.
    pub fn interface(&self) -> &str {
        self.param("interface")
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.path)
    }

    /// Parameter `group`, empty when absent.
    pub fn group(&self) -> &str {
        self.param("group").unwrap_or("")
    }

    /// Parameter `version`, empty when absent.
    pub fn version(&self) -> &str {
        self.param("version").unwrap_or("")
    }

    /// Parameter `methods`, split at commas.
    pub fn methods(&self) -> Vec<&str> {
        self.param("methods")
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// `host:port` (IPv6 hosts in brackets); the host alone without a port.
    pub fn address(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// The URL escaped as Dubbo names its ZooKeeper node.
    pub fn to_node_name(&self) -> String {
        encode_component(&self.to_string())
    }

    /// Reads a URL escaped as a ZooKeeper node name.
    pub fn from_node_name(name: &str) -> Result<DubboUrl, UrlError> {
        DubboUrl::parse(&decode_component(name)?)
    }

    /// Reads a URL as Dubbo writes it. Parameters without `=` get an empty
    /// value, empty ones are skipped, a repeated key keeps its last value.
    pub fn parse(url: &str) -> Result<DubboUrl, UrlError> {
        let s = url.trim();
        let Some((protocol, rest)) = s.split_once("://") else {
            return Err(UrlError::NoProtocol { url: url.into() });
        };
        if protocol.is_empty() {
            return Err(UrlError::NoProtocol { url: url.into() });
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(n.to_string()), Some(p.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => {
                    return Err(UrlError::BadComponent {
                        field: "host",
                        value: hostport.into(),
                        reason: "has no closing ']'",
                    })
                }
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None | Some("") => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(UrlError::BadPort {
                        url: url.into(),
                        port: p.into(),
                    })
                }
            },
        };
        let mut params = BTreeMap::new();
        for pair in query.unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k.is_empty() {
                continue;
            }
            params.insert(k.to_string(), v.trim().to_string());
        }
        Ok(DubboUrl {
            protocol: protocol.into(),
            username,
            password,
            host: host.into(),
            port,
            path: path.into(),
            params,
        })
    }
}

impl fmt::Display for DubboUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.protocol)?;
        if let Some(u) = &self.username {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.address())?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Escapes as Java's `URLEncoder.encode(s, "UTF-8")` does.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

/// Undoes [`encode_component`] (as Java's `URLDecoder.decode`: `+` is a space).
pub fn decode_component(s: &str) -> Result<String, UrlError> {
    let bad = |reason| UrlError::BadEscape {
        text: s.into(),
        reason,
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(bad("a '%' not followed by two hex digits")),
                }
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("the escaped bytes are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_as_dubbo_writes() {
        let url = DubboUrl::new("dubbo", "10.0.0.5", Some(20880), "dev.weft.test.Greeter")
            .unwrap()
            .with_param("side", "provider")
            .unwrap()
            .with_param("methods", "greet,slow")
            .unwrap()
            .with_param("anyhost", "true")
            .unwrap()
            .with_param("interface", " dev.weft.test.Greeter ")
            .unwrap();
        let s = url.to_string();
        assert_eq!(
            s,
            "dubbo://10.0.0.5:20880/dev.weft.test.Greeter?anyhost=true&interface=dev.weft.test.Greeter&methods=greet,slow&side=provider"
        );
        assert_eq!(
            url.to_node_name(),
            "dubbo%3A%2F%2F10.0.0.5%3A20880%2Fdev.weft.test.Greeter%3Fanyhost%3Dtrue%26interface%3Ddev.weft.test.Greeter%26methods%3Dgreet%2Cslow%26side%3Dprovider"
        );
        assert_eq!(DubboUrl::parse(&s).unwrap(), url);
        assert_eq!(DubboUrl::from_node_name(&url.to_node_name()).unwrap(), url);
        assert_eq!(url.methods(), vec!["greet", "slow"]);
        assert_eq!(url.interface(), "dev.weft.test.Greeter");
        assert_eq!(url.group(), "");
    }

    #[test]
    fn parses_what_java_dubbo_registers() {
        let node = "dubbo%3A%2F%2F192.168.1.7%3A20880%2Forg.apache.dubbo.demo.DemoService%3Fanyhost%3Dtrue%26application%3Ddemo-provider%26dubbo%3D2.0.2%26group%3Dg%26interface%3Dorg.apache.dubbo.demo.DemoService%26methods%3DsayHello%2CsayHelloAsync%26pid%3D4242%26side%3Dprovider%26timestamp%3D1700000000000%26version%3D1.0.0";
        let url = DubboUrl::from_node_name(node).unwrap();
        assert_eq!(url.protocol(), "dubbo");
        assert_eq!(url.address(), "192.168.1.7:20880");
        assert_eq!(url.interface(), "org.apache.dubbo.demo.DemoService");
        assert_eq!((url.group(), url.version()), ("g", "1.0.0"));
        assert_eq!(url.to_node_name(), node);
        let c = DubboUrl::parse("consumer://10.1.1.1/a.B?category=consumers&flag&=x&&k=v").unwrap();
        assert_eq!(c.port(), None);
        assert_eq!(c.param("flag"), Some(""));
        assert_eq!(c.params().len(), 3);
        let v6 = DubboUrl::parse("dubbo://u:p@[::1]:20880/a.B").unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", Some(20880)));
        assert_eq!((v6.username(), v6.password()), (Some("u"), Some("p")));
        assert_eq!(v6.to_string(), "dubbo://u:p@[::1]:20880/a.B");
    }

    #[test]
    fn escaping_matches_java_url_encoder() {
        assert_eq!(encode_component("a b*c_d-e.f~g/h"), "a+b*c_d-e.f%7Eg%2Fh");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(decode_component("a+b%2fc%C3%A9").unwrap(), "a b/cé");
        for bad in ["%", "%4", "%zz", "%C3"] {
            assert!(decode_component(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_inputs_name_the_part() {
        for (url, what) in [
            ("no-protocol", "no protocol"),
            ("://host", "no protocol"),
            ("dubbo://h:99999/x", "invalid port"),
            ("dubbo://h:x/x", "invalid port"),
            ("dubbo://[::1/x", "closing"),
        ] {
            let e = DubboUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(what), "{url}: {e}");
        }
        let mut u = DubboUrl::new("dubbo", "h", Some(1), "a.B").unwrap();
        for (k, v) in [
            ("", "x"),
            ("a=b", "x"),
            ("a&b", "x"),
            ("k", "x&y"),
            ("k", "a#b"),
        ] {
            let e = u.set_param(k, v).unwrap_err().to_string();
            assert!(e.contains(&format!("'{k}'")), "{k}={v}: {e}");
        }
        assert!(DubboUrl::new("", "h", None, "p").is_err());
        assert!(DubboUrl::new("dubbo", "", None, "p").is_err());
        assert!(DubboUrl::new("dubbo", "h/x", None, "p").is_err());
        assert!(DubboUrl::new("dubbo", "h", Some(0), "p").is_err());
        assert!(DubboUrl::new("dubbo", "h", None, "/p").is_err());
    }
}
