//! Messages on the template's control socket, with fds passed alongside
//! (`SCM_RIGHTS`). Requests come from the supervisor, which is trusted; the
//! replies come from the template, which never ran user code.

use kiln_policy::Limits;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Largest control message; requests are a few hundred bytes.
pub const MAX_MSG: usize = 64 << 10;
/// Most fds one message carries.
pub const MAX_FDS: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
// One short-lived message per fork, serialized at once: its size is not worth
// a Box (`Fork` outgrew clippy's limit with the library tree and egress).
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Fork one sandbox. Fds, in order: sync read end, error write end,
    /// channel, stdout write end, stderr write end, /dev/null.
    Fork {
        uid: u32,
        limits: Limits,
        /// The runner's environment for this sandbox (set by the child).
        env: Vec<(String, String)>,
        /// Datasets to mount (the template has every configured one).
        datasets: Vec<String>,
        /// The environment whose egress socket directory (under the
        /// template's `/kiln-egress`) the child binds at `/run/kiln`.
        #[serde(default)]
        egress: Option<String>,
        /// The library tree to mount at `/libraries` (the template has the
        /// directory of every tree).
        #[serde(default)]
        library_tree: Option<String>,
    },
    /// The wait status of a forked sandbox (pid in the template's namespace).
    Status { pid: i32 },
    /// Leave the fork loop and exit.
    Exit,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The template is warm and waits for requests.
    Ready {
        pid: i32,
        threads: u32,
        /// Whether glibc's cached thread id can be fixed in each child.
        #[serde(default)]
        tid_fixed: bool,
        /// Bytes of the template's memory moved into huge pages.
        #[serde(default)]
        huge_bytes: u64,
        /// Bytes of Python objects in the huge-page arena region.
        #[serde(default)]
        arena_bytes: u64,
    },
    /// A child was forked; its pidfd comes with this message.
    Forked {
        pid: i32,
    },
    Status {
        status: Option<i32>,
    },
    Error {
        message: String,
    },
}

/// Sends `msg` with `fds` attached.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    let mut cmsg_buf = [0u8; 128];
    // SAFETY: an all-zero msghdr is valid; every pointer set below points at
    // live buffers of the stated lengths for the duration of sendmsg.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        assert!(space <= cmsg_buf.len() && fds.len() <= MAX_FDS);
        hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
        hdr.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes; CMSG_FIRSTHDR returns
        // a header inside that buffer, and CMSG_DATA leaves room for the fds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `hdr` describes valid buffers (see above).
    let n = unsafe { libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != body.len() {
        return Err(io::Error::other("short control message"));
    }
    Ok(())
}

/// Receives one message and the fds that came with it; `None` at EOF.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: RawFd) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut body = vec![0u8; MAX_MSG];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    let mut cmsg_buf = [0u8; 256];
    // SAFETY: as in `send`; the buffers outlive recvmsg.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg_buf.len();
    let n = loop {
        // SAFETY: `hdr` describes valid, writable buffers.
        let n = unsafe { libc::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let fds = take_fds(&hdr);
    if n == 0 {
        return Ok(None);
    }
    if hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("control message truncated"));
    }
    let msg = serde_json::from_slice(&body[..n]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

fn take_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into the buffer
    // `hdr` points at, with the libc macros made for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn messages_and_fds_cross_a_socketpair() {
        let (a, b) = crate::sys::socketpair().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        send(a, &Request::Status { pid: 7 }, &[devnull.as_raw_fd()]).unwrap();
        let (msg, fds): (Request, _) = recv(b).unwrap().unwrap();
        assert!(matches!(msg, Request::Status { pid: 7 }));
        assert_eq!(fds.len(), 1);
        crate::sys::close(a);
        assert!(recv::<Request>(b).unwrap().is_none());
        crate::sys::close(b);
    }
}
