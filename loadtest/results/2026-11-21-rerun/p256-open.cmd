target/release/cloudkey-loadtest --alg p256 --workers 32 --rate 15471 --duration 8 --warmup 2 pkcs11 --module /work/main/target/release/libcloudkey_pkcs11.so --token dev --pin 1234 --name cloudkey
