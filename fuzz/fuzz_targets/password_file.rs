//! Arbitrary bytes as a password file: parsing never panics, a refusal names its line, and
//! what parses renders to text that parses to the same file. Each parsed hash is verified
//! against a fixed password (a hostile file's hash must not panic or run unbounded: PBKDF2
//! iteration counts are capped when the file is read).
#![no_main]

use keelmq_auth::PasswordFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PasswordFile::parse_lenient(text) {
        Ok(file) => {
            let again = PasswordFile::parse_lenient(&file.render());
            assert_eq!(again.as_ref(), Ok(&file));
            for user in file.users() {
                if let Some(hash) = file.hash_of(user) {
                    let _ = hash.verify(b"password");
                }
            }
        }
        Err(e) => assert!(e.line >= 1),
    }
});
