target/release/cloudkey-loadtest --workload keygen --alg p256 --workers 32 --duration 6 --warmup 2 pkcs11 --module target/release/libcloudkey_pkcs11.so --token dev --pin 1234 --name cloudkey
