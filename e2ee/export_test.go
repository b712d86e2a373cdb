package e2ee

// What the package's own external tests (package e2ee_test) reach that no other package uses.

const (
	ReasonContradicts = reasonContradicts
	ReasonOtherSender = reasonOtherSender

	TrustVerified        = trustVerified
	TrustCrossSigned     = trustCrossSigned
	TrustUnsigned        = trustUnsigned
	TrustIdentityChanged = trustIdentityChanged
	TrustUnknownDevice   = trustUnknownDevice
	TrustForwarded       = trustForwarded
	TrustKeyMismatch     = trustKeyMismatch
	TrustBlacklisted     = trustBlacklisted
)

var UsableEncryption = usableEncryption
