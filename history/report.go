package history

import (
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The API's JSON shapes for bundles. They are built from database rows, which carry more than the
// API shows (the puppet, sealed file details, retry bookkeeping) and no JSON tags of their own.

// DeliveryReport is the outcome of a sent bundle for one invitee device.
type DeliveryReport struct {
	UserID    id.UserID   `json:"user_id"`
	DeviceID  id.DeviceID `json:"device_id"`
	Delivered bool        `json:"delivered"`
	Reason    string      `json:"reason,omitempty"`
	// AddedLater: the device was added (or signed) after the bundle was first delivered.
	AddedLater bool `json:"added_later,omitempty"`
}

func deliveryReports(devices []database.Delivery) []DeliveryReport {
	out := make([]DeliveryReport, 0, len(devices))
	for _, d := range devices {
		out = append(out, DeliveryReport{UserID: d.UserID, DeviceID: d.DeviceID, Delivered: d.Delivered, Reason: d.Reason,
			AddedLater: d.AddedLater})
	}
	return out
}

// InviteResult is what POST …/invite answers.
type InviteResult struct {
	Bundle *BundleReport `json:"bundle"`
}

// BundleReport describes the bundle an invite built.
type BundleReport struct {
	BundleID string           `json:"bundle_id"`
	State    string           `json:"state"`
	Sessions int              `json:"sessions"`
	Withheld int              `json:"withheld"`
	MXC      string           `json:"mxc,omitempty"`
	Size     int64            `json:"size,omitempty"`
	Devices  []DeliveryReport `json:"devices"`
	Reason   string           `json:"reason,omitempty"`
}

func report(b *database.SentBundle) *BundleReport {
	return &BundleReport{BundleID: b.BundleID, State: b.State, Sessions: b.Sessions, Withheld: b.Withheld,
		MXC: b.MXC, Size: b.Size, Devices: deliveryReports(b.Devices), Reason: b.Reason}
}

// SentReport is a bundle a puppet sent, as GET …/bundles lists it.
type SentReport struct {
	BundleID      string           `json:"bundle_id"`
	Kind          string           `json:"kind"`
	Puppet        id.UserID        `json:"puppet"`
	RoomID        id.RoomID        `json:"room_id"`
	Invitee       id.UserID        `json:"invitee"`
	InviteEventID id.EventID       `json:"invite_event_id,omitempty"`
	State         string           `json:"state"`
	Sessions      int              `json:"sessions"`
	Withheld      int              `json:"withheld"`
	Size          int64            `json:"size"`
	MXC           string           `json:"mxc,omitempty"`
	Reason        string           `json:"reason,omitempty"`
	CreatedAt     int64            `json:"created_at"`
	UpdatedAt     int64            `json:"updated_at"`
	Devices       []DeliveryReport `json:"devices"`
}

func sentReport(b *database.SentBundle) SentReport {
	inviteEvent := b.InviteEventID
	if b.Kind == database.SentKindReshare {
		inviteEvent = "" // a marker, not an event
	}
	return SentReport{BundleID: b.BundleID, Kind: b.Kind, Puppet: b.Puppet, RoomID: b.RoomID, Invitee: b.Invitee, InviteEventID: inviteEvent,
		State: b.State, Sessions: b.Sessions, Withheld: b.Withheld, Size: b.Size, MXC: b.MXC, Reason: b.Reason,
		CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt, Devices: deliveryReports(b.Devices)}
}

// ReceivedReport is a bundle a puppet received, as GET …/bundles lists it and POST …/join reports it.
type ReceivedReport struct {
	Puppet       id.UserID   `json:"puppet"`
	RoomID       id.RoomID   `json:"room_id"`
	Sender       id.UserID   `json:"sender"`
	SenderDevice id.DeviceID `json:"sender_device"`
	State        string      `json:"state"`
	Imported     int         `json:"imported"`
	Withheld     int         `json:"withheld"`
	Skipped      int         `json:"skipped"`
	Error        string      `json:"error,omitempty"`
	Attempts     int         `json:"attempts"`
	ReceivedAt   int64       `json:"received_at"`
	UpdatedAt    int64       `json:"updated_at"`
}

func receivedReport(b *database.ReceivedBundle) *ReceivedReport {
	if b == nil {
		return nil
	}
	return &ReceivedReport{Puppet: b.Puppet, RoomID: b.RoomID, Sender: b.Sender, SenderDevice: b.SenderDevice, State: b.State,
		Imported: b.Imported, Withheld: b.Withheld, Skipped: b.Skipped, Error: b.Error, Attempts: b.Attempts,
		ReceivedAt: b.ReceivedAt, UpdatedAt: b.UpdatedAt}
}

// JoinResult is what POST …/join answers.
type JoinResult struct {
	RoomID id.RoomID       `json:"room_id"`
	Bundle *ReceivedReport `json:"bundle,omitempty"`
	// History says in words what happened to the room's history for this puppet.
	History string `json:"history"`
}

// RoomBundlesResult is what every puppet sent and received for one room, newest first.
type RoomBundlesResult struct {
	Sent     []SentReport      `json:"sent"`
	Received []*ReceivedReport `json:"received"`
}

// BundlesResult is what GET …/bundles answers: what the puppet sent and received, newest first.
type BundlesResult struct {
	Sent     []SentReport      `json:"sent"`
	Received []*ReceivedReport `json:"received"`
}
